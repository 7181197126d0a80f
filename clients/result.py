"""The one result type and the one exception type every client returns and raises."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deployments.pipeline.outputs import ClassShare

__all__ = ["ClassShare", "SegServeClientError", "SegmentationResult", "read_image"]


class SegServeClientError(Exception):
    """A request that did not produce a result.

    ``code`` is the service's error code (``unknown_model``, ``image_too_large``,
    ...) or ``unreachable`` / ``timeout`` for transport failures; ``status`` is the
    HTTP status or the gRPC status code name.
    """

    def __init__(self, code: str, message: str, status: int | str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass
class SegmentationResult:
    model: str
    weights: str
    width: int
    height: int
    processed: tuple[int, int]
    classes: list[ClassShare]
    mask_png: bytes | None
    timings_ms: dict[str, float]
    batch_size: int
    warning: str | None = None
    #: {budget_ms, predicted_ms, met, chosen_by}: how the model was chosen.
    budget: dict[str, Any] = field(default_factory=dict)
    _labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def labels(self) -> np.ndarray | None:
        """The label map (class id per pixel), decoded from the PNG on first use."""
        if self._labels is None and self.mask_png:
            with Image.open(io.BytesIO(self.mask_png)) as image:
                array = np.asarray(image)
                self._labels = array.astype(np.uint8 if image.mode == "L" else np.uint16)
        return self._labels

    def save_mask(self, path: str | Path) -> Path:
        if not self.mask_png:
            raise ValueError("this result has no mask (outputs did not include 'mask')")
        target = Path(path)
        target.write_bytes(self.mask_png)
        return target

    @classmethod
    def from_http_json(cls, body: dict[str, Any]) -> SegmentationResult:
        import base64

        mask = body.get("mask")
        return cls(
            model=body["model"],
            weights=body["weights"],
            width=body["width"],
            height=body["height"],
            processed=(body["processed"]["width"], body["processed"]["height"]),
            classes=[ClassShare(**row) for row in body.get("classes", [])],
            mask_png=base64.b64decode(mask["data"]) if mask else None,
            timings_ms=dict(body["timings_ms"]),
            batch_size=body["batch_size"],
            warning=body.get("warning"),
            budget=dict(body.get("budget") or {}),
        )

    @classmethod
    def from_proto(cls, response: Any) -> SegmentationResult:
        timings = response.timings
        return cls(
            model=response.model,
            weights=response.weights,
            width=response.size.width,
            height=response.size.height,
            processed=(response.processed.width, response.processed.height),
            classes=[
                ClassShare(id=c.id, name=c.name, pixels=c.pixels, fraction=c.fraction)
                for c in response.classes
            ],
            mask_png=bytes(response.mask_png) or None,
            timings_ms={
                "decode": timings.decode_ms,
                "queue": timings.queue_ms,
                "inference": timings.inference_ms,
                "encode": timings.encode_ms,
                "total": timings.total_ms,
            },
            batch_size=response.batch_size,
            warning=response.warning or None,
            budget={
                "budget_ms": response.budget.budget_ms
                if response.budget.HasField("budget_ms")
                else None,
                "predicted_ms": response.budget.predicted_ms,
                "met": response.budget.met if response.budget.HasField("met") else None,
                "chosen_by": response.budget.chosen_by,
            },
        )


def read_image(image: bytes | str | Path) -> bytes:
    """Image bytes from bytes or a path."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    return Path(image).read_bytes()
