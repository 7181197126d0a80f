"""The transport-free segmentation service: bytes + options in, result out.

HTTP and gRPC handlers both call :meth:`SegmentationService.segment`; it
resolves the model, decodes and downscales the image for that model, hands it
to a :class:`ModelEndpoint` (a Ray deployment handle in production, the model
core in-process in benchmarks) and encodes what the client asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from deployments.pipeline.errors import DeadlineExceeded, UnknownModel
from deployments.pipeline.imaging import (
    DecodedImage,
    ImageLimits,
    InputSpec,
    decode_image,
    fit_within,
    resize_labels,
)
from deployments.pipeline.options import AUTO_MODEL, SegmentOptions
from deployments.pipeline.outputs import ClassShare, class_table, encode_label_png


@dataclass(frozen=True)
class ModelCard:
    """What the gateway must know of a model to prepare requests and read answers."""

    name: str
    framework: str
    weights: str  # "pretrained" | "random"
    weights_note: str | None
    labels: list[str]
    input_spec: InputSpec
    label_max_pixels: int


@dataclass
class PredictRequest:
    """One image on its way to a model replica."""

    image: np.ndarray  # HxWx3 uint8 at the model's input size
    label_size: tuple[int, int]  # (width, height) of the label map to return
    deadline: float | None = None  # time.time() after which it must not run
    sent_at: float = field(default_factory=time.time)

    @property
    def pixels(self) -> int:
        return int(self.image.shape[0]) * int(self.image.shape[1])


@dataclass
class Prediction:
    labels: np.ndarray  # (height, width) uint8/uint16 at the requested label size
    queue_ms: float
    inference_ms: float
    batch_size: int


class ModelEndpoint(Protocol):
    async def card(self) -> ModelCard: ...

    async def predict(self, request: PredictRequest) -> Prediction: ...


@dataclass
class SegmentResult:
    model: str
    weights: str
    weights_note: str | None
    width: int
    height: int
    processed: tuple[int, int]
    classes: list[ClassShare] | None
    mask_png: bytes | None
    mask_size: tuple[int, int]
    timings_ms: dict[str, float]
    batch_size: int

    def to_json(self) -> dict[str, Any]:
        """The HTTP JSON body (the mask as base64 PNG)."""
        import base64

        body: dict[str, Any] = {
            "model": self.model,
            "weights": self.weights,
            "width": self.width,
            "height": self.height,
            "processed": {"width": self.processed[0], "height": self.processed[1]},
        }
        if self.weights == "random":
            body["warning"] = f"model {self.model!r} runs on random weights: {self.weights_note}"
        if self.classes is not None:
            body["classes"] = [row.to_dict() for row in self.classes]
        if self.mask_png is not None:
            body["mask"] = {
                "format": "png",
                "width": self.mask_size[0],
                "height": self.mask_size[1],
                "data": base64.b64encode(self.mask_png).decode("ascii"),
            }
        body["timings_ms"] = self.timings_ms
        body["batch_size"] = self.batch_size
        return body


class SegmentationService:
    """Decode -> model -> encode, shared by every transport."""

    def __init__(
        self,
        endpoints: Mapping[str, ModelEndpoint],
        default_model: str,
        limits: ImageLimits,
        png_compress_level: int = 1,
    ) -> None:
        if default_model not in endpoints:
            raise ValueError(f"default model {default_model!r} is not among the endpoints")
        self.endpoints = dict(endpoints)
        self.default_model = default_model
        self.limits = limits
        self.png_compress_level = png_compress_level

    def resolve_model(self, requested: str) -> str:
        if requested == AUTO_MODEL:
            return self.default_model
        if requested not in self.endpoints:
            raise UnknownModel(
                f"unknown model {requested!r}; available: "
                f"{', '.join(sorted(self.endpoints))} (or 'auto')"
            )
        return requested

    async def segment(self, data: bytes, options: SegmentOptions) -> SegmentResult:
        started = time.perf_counter()
        deadline = options.deadline(time.time())
        name = self.resolve_model(options.model)
        endpoint = self.endpoints[name]
        card = await endpoint.card()

        decoded: DecodedImage = await asyncio.to_thread(
            decode_image, data, card.input_spec, self.limits
        )
        label_size = fit_within(decoded.width, decoded.height, card.label_max_pixels)
        if deadline is not None and time.time() >= deadline:
            raise DeadlineExceeded(
                f"budget of {options.budget_ms:g} ms used up before the model could run"
            )
        sent = time.perf_counter()
        prediction = await endpoint.predict(
            PredictRequest(image=decoded.pixels, label_size=label_size, deadline=deadline)
        )
        returned = time.perf_counter()

        out_w, out_h = (
            (decoded.width, decoded.height) if options.mask_size == "original" else label_size
        )
        classes, png = await asyncio.to_thread(
            self._encode, prediction.labels, out_w, out_h, card.labels, options.outputs
        )
        finished = time.perf_counter()
        round_trip_ms = (returned - sent) * 1000
        return SegmentResult(
            model=name,
            weights=card.weights,
            weights_note=card.weights_note,
            width=decoded.width,
            height=decoded.height,
            processed=decoded.processed_size,
            classes=classes,
            mask_png=png,
            mask_size=(out_w, out_h),
            timings_ms={
                "decode": round(decoded.decode_ms, 2),
                # Everything between sending and the batch starting: transport and queueing.
                "queue": round(max(0.0, round_trip_ms - prediction.inference_ms), 2),
                "inference": round(prediction.inference_ms, 2),
                "encode": round((finished - returned) * 1000, 2),
                "total": round((finished - started) * 1000, 2),
            },
            batch_size=prediction.batch_size,
        )

    def _encode(
        self,
        labels: np.ndarray,
        width: int,
        height: int,
        names: list[str],
        outputs: frozenset[str],
    ) -> tuple[list[ClassShare] | None, bytes | None]:
        classes = class_table(labels, width, height, names) if "classes" in outputs else None
        png = None
        if "mask" in outputs:
            png = encode_label_png(resize_labels(labels, width, height), self.png_compress_level)
        return classes, png
