"""The transport-free segmentation pipeline: bytes + options in, result out.

Every protocol module calls :meth:`SegmentationService.segment`: resolve the
model (by name, or by budget through the :class:`Router`), decode and downscale
the image for that model, hand it to a :class:`ModelEndpoint` (a Ray deployment
handle in production, a model core in-process in tests, benchmarks and GPU
checks) and encode what the client asked for.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployments.config import GatewayConfig, ModelConfig
from deployments.contract import ModelCard, ModelEndpoint, PredictRequest
from deployments.pipeline.errors import DeadlineExceeded, ImageTooLarge, UnknownModel
from deployments.pipeline.imaging import (
    DecodedImage,
    ImageLimits,
    InputSpec,
    _to_model_pixels,
    decode_image,
    fit_within,
    resize_labels,
)
from deployments.pipeline.options import AUTO_MODEL, SegmentOptions
from deployments.pipeline.outputs import class_table, encode_label_png
from deployments.pipeline.routing import RouteChoice, Router, explicit
from deployments.protocols.wire import (
    Budget,
    ClassShare,
    SegmentResult,
    Timings,
    random_weights_warning,
)

#: An output name beside ``classes`` and ``mask``: the label map itself, at the mask size,
#: kept on :attr:`SegmentResult.labels` (the Open Inference Protocol's ``labels`` tensor)
#: without a PNG round trip. Not a ``/v1`` option: protocols add it to the options.
LABEL_MAP_OUTPUT = "labels"


@dataclass(frozen=True)
class Pixels:
    """Decoded RGB pixels (height x width x 3, uint8) to segment instead of an encoded file.

    The Open Inference Protocol's UINT8 ``image`` tensor; everything after the decode
    (limits on pixels, routing, the model's resize, batching, outputs) is the same path.
    """

    array: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or self.array.shape[2] != 3 or self.array.dtype != np.uint8:
            raise ValueError(f"pixels are HxWx3 uint8, got {self.array.dtype} {self.array.shape}")

    @property
    def size(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[0])


class SegmentationService:
    """Decode -> model -> encode, shared by every transport; routes ``model=auto`` by budget."""

    def __init__(
        self,
        endpoints: Mapping[str, ModelEndpoint],
        models: Sequence[ModelConfig],
        gateway: GatewayConfig,
        replicas: Callable[[str], int | None] | None = None,
        on_result: Callable[[SegmentResult], None] | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        if set(endpoints) != set(self.models):
            raise ValueError("one endpoint per configured model")
        self.endpoints = dict(endpoints)
        self.default_model = gateway.default_model or models[0].name
        self.config = gateway
        self.limits = gateway.limits.image_limits()
        self.router = Router(gateway.routing, self.models, self.default_model, replicas)
        self._on_result = on_result

    def resolve_model(self, requested: str) -> str:
        if requested == AUTO_MODEL:
            return self.default_model
        if requested not in self.endpoints:
            raise UnknownModel(
                f"unknown model {requested[:64]!r}; available: "
                f"{', '.join(sorted(self.endpoints))} (or 'auto')"
            )
        return requested

    async def _cards(self) -> dict[str, ModelCard]:
        """Cards of the models that answer; a model that is down is not a candidate."""
        names = list(self.endpoints)
        timeout = self.config.routing.card_timeout_s
        cards = await asyncio.gather(
            *(
                self.endpoints[n].card()
                if n == self.default_model
                else asyncio.wait_for(self.endpoints[n].card(), timeout)
                for n in names
            ),
            return_exceptions=True,
        )
        usable = {n: c for n, c in zip(names, cards, strict=True) if isinstance(c, ModelCard)}
        if self.default_model not in usable:
            failure = cards[names.index(self.default_model)]
            assert isinstance(failure, BaseException)
            raise failure
        return usable

    async def route(
        self, options: SegmentOptions, image_size: tuple[int, int] | None, elapsed_ms: float
    ) -> tuple[RouteChoice, ModelCard]:
        budget = options.budget_ms
        remaining = None if budget is None else budget - elapsed_ms
        if options.model != AUTO_MODEL or budget is None or options.budget_is_deadline:
            name = self.resolve_model(options.model)
            card = await self.endpoints[name].card()
            predicted = self.router.predict_ms(card, image_size)
            if options.model == AUTO_MODEL:
                return RouteChoice(name, predicted, None, "default"), card
            return explicit(name, predicted, remaining, options.strict), card
        cards = await self._cards()
        choice = self.router.choose(cards, image_size, remaining, options.strict)
        return choice, cards[choice.name]

    # ------------------------------------------------------------ one request

    async def segment(self, data: bytes | Pixels, options: SegmentOptions) -> SegmentResult:
        started = time.perf_counter()

        def elapsed_ms() -> float:
            return (time.perf_counter() - started) * 1000

        size = peek_size(data) if isinstance(data, bytes) else data.size
        choice, card = await self.route(options, size, elapsed_ms())
        name = choice.name
        decoded: DecodedImage = await asyncio.to_thread(
            decode_input, data, card.input_spec, self.limits
        )
        decoded_at = time.perf_counter()
        label_size = fit_within(decoded.width, decoded.height, self.models[name].label_max_pixels)
        budget_left = None if options.budget_ms is None else options.budget_ms - elapsed_ms()
        if budget_left is not None and budget_left <= 0:
            raise DeadlineExceeded(
                f"budget of {options.budget_ms:g} ms used up before the model could run"
            )
        queue_estimate = self.router.queue_ms(card)
        request = PredictRequest(image=decoded.pixels, label_size=label_size, budget_ms=budget_left)
        sent = time.perf_counter()
        with self.router.in_flight(card, request.pixels):
            prediction = await self.endpoints[name].predict(request)
        returned = time.perf_counter()

        out_w, out_h = (
            (decoded.width, decoded.height) if options.mask_size == "original" else label_size
        )
        classes, png, label_map = await asyncio.to_thread(
            self._encode_outputs, prediction.labels, out_w, out_h, card.labels, options.outputs
        )
        finished = time.perf_counter()
        round_trip_ms = (returned - sent) * 1000
        total_ms = (finished - started) * 1000
        gateway_ms = (decoded_at - started) * 1000 + (finished - returned) * 1000
        self.router.observe(
            card, prediction, round_trip_ms, queue_estimate,
            decoded.width * decoded.height, gateway_ms,
        )  # fmt: skip
        result = SegmentResult(
            model=name,
            # The replica that ran it says which weights it has: replicas of one model
            # may differ (weights: auto on nodes with and without the weights cached).
            weights=prediction.weights,
            warning=(
                random_weights_warning(name, prediction.weights_note)
                if prediction.weights == "random"
                else None
            ),
            width=decoded.width,
            height=decoded.height,
            processed=decoded.processed_size,
            classes=classes,
            mask_png=png,
            mask_size=(out_w, out_h),
            _labels=label_map,
            timings=Timings(
                decode=round(decoded.decode_ms, 2),
                queue=round(max(0.0, round_trip_ms - prediction.inference_ms), 2),
                inference=round(prediction.inference_ms, 2),
                encode=round((finished - returned) * 1000, 2),
                total=round(total_ms, 2),
            ),
            batch_size=prediction.batch_size,
            budget=Budget(
                budget_ms=options.budget_ms,
                predicted_ms=round(choice.predicted_ms, 1),
                met=None if options.budget_ms is None else total_ms <= options.budget_ms,
                chosen_by=choice.chosen_by,
            ),
        )
        if self._on_result is not None:
            self._on_result(result)
        return result

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
            png = encode_label_png(
                resize_labels(labels, width, height), self.config.png_compress_level
            )
        return classes, png

    def _encode_outputs(
        self,
        labels: np.ndarray,
        width: int,
        height: int,
        names: list[str],
        outputs: frozenset[str],
    ) -> tuple[list[ClassShare] | None, bytes | None, np.ndarray | None]:
        """:meth:`_encode`, plus the label map at the output size when ``outputs`` asks for
        :data:`LABEL_MAP_OUTPUT` (resized once, for the PNG too)."""
        if LABEL_MAP_OUTPUT not in outputs:
            return (*self._encode(labels, width, height, names, outputs), None)
        label_map = resize_labels(labels, width, height)
        classes, _ = self._encode(labels, width, height, names, outputs & {"classes"})
        png = None
        if "mask" in outputs:
            png = encode_label_png(label_map, self.config.png_compress_level)
        return classes, png, label_map

    # ------------------------------------------------------------ models, readiness

    async def describe(self, name: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """A model for ``/v1/models``: what its replica says, or why it cannot say."""
        config = self.models.get(name)
        if config is None:
            raise UnknownModel(
                f"unknown model {name[:64]!r}; available: {', '.join(sorted(self.models))}"
            )
        try:
            info = dict(await asyncio.wait_for(self.endpoints[name].describe(), timeout_s))
            info["ready"] = True
        except Exception as e:  # a model that is loading or down is listed, not hidden
            info = {
                "name": name,
                "framework": config.framework,
                "source": config.source,
                "weights_policy": config.weights,
                "ready": False,
                "error": getattr(e, "message", None) or "not answering (loading?)",
            }
            try:  # what its replicas loaded is still known if a card came before
                card = await asyncio.wait_for(self.endpoints[name].card(), 0.5)
                info.update(weights=card.weights, weights_note=card.weights_note)
                info["labels"] = list(card.labels)
            except Exception:
                pass
        info.setdefault("quality", config.quality)
        info["num_replicas"] = config.num_replicas
        info["routing"] = self.router.info(name)
        if config.autoscaling_config is not None:
            info["autoscaling"] = config.autoscaling_config.ray_options()
        return info

    async def describe_all(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.describe(n) for n in self.models)))

    async def not_ready(self, timeout_s: float = 5.0) -> list[str]:
        """Models with no replica answering within ``timeout_s`` (empty: all ready)."""

        async def check(name: str) -> str | None:
            try:
                ready = await asyncio.wait_for(self.endpoints[name].ready(), timeout_s)
            except Exception:
                return name
            return None if ready else name

        return [n for n in await asyncio.gather(*(check(n) for n in self.models)) if n]


def decode_input(data: bytes | Pixels, spec: InputSpec, limits: ImageLimits) -> DecodedImage:
    """Encoded bytes through :func:`decode_image`; decoded pixels through the same resize
    to the model's input spec, within the same pixel limit."""
    if isinstance(data, bytes):
        return decode_image(data, spec, limits)
    started = time.perf_counter()
    width, height = data.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels} pixels"
        )
    from PIL import Image

    target = spec.target_size(width, height)
    pixels = _to_model_pixels(Image.fromarray(data.array), spec, target)
    return DecodedImage(
        pixels=pixels,
        width=width,
        height=height,
        format="RAW",
        decoded_size=(width, height),
        decode_ms=(time.perf_counter() - started) * 1000,
    )


def peek_size(data: bytes) -> tuple[int, int] | None:
    """An image's stored (width, height) from its header, without decoding; None if unreadable.

    Routing needs the size before choosing a model; decoding (and every error
    about the bytes) happens afterwards, for the chosen model.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.width), int(image.height)
    except Exception:
        return None
