"""The one result type and the one exception type every client returns and raises.

The result is the service's own wire type (:mod:`deployments.protocols.wire`): the
JSON and protobuf forms are read by the same code that writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deployments.protocols.wire import Budget, ClassShare, Overlay, SegmentResult, Timings

#: What ``segment()`` returns on every client.
SegmentationResult = SegmentResult

__all__ = [
    "Budget",
    "ClassShare",
    "DrawOptions",
    "Overlay",
    "SegServeClientError",
    "SegmentationResult",
    "Timings",
    "read_image",
]


@dataclass(frozen=True)
class DrawOptions:
    """Options of the contours and overlay outputs; None leaves the server's default."""

    #: contours: leave out contours enclosing less than this fraction of the image.
    min_area: float | None = None
    #: contours: Douglas-Peucker tolerance in pixels of the original image.
    simplify: float | None = None
    #: contours: at most this many classes, largest first.
    max_classes: int | None = None
    #: overlay: weight of the class colours over the photo, 0..1.
    alpha: float | None = None
    #: overlay: "jpeg" or "png".
    overlay_format: str | None = None
    #: overlay: draw a legend of the classes present.
    legend: bool | None = None

    def params(self) -> dict[str, str]:
        """As HTTP query parameters."""
        values = {
            "min_area": self.min_area,
            "simplify": self.simplify,
            "max_classes": self.max_classes,
            "alpha": self.alpha,
            "overlay_format": self.overlay_format,
            "legend": None if self.legend is None else str(self.legend).lower(),
        }
        return {key: str(value) for key, value in values.items() if value is not None}


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


def read_image(image: bytes | str | Path) -> bytes:
    """Image bytes from bytes or a path."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    return Path(image).read_bytes()
