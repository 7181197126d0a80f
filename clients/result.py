"""The one result type and the one exception type every client returns and raises.

The result is the service's own wire type (:mod:`deployments.protocols.wire`): the
JSON and protobuf forms are read by the same code that writes them.
"""

from __future__ import annotations

from pathlib import Path

from deployments.protocols.wire import Budget, ClassShare, SegmentResult, Timings

#: What ``segment()`` returns on every client.
SegmentationResult = SegmentResult

__all__ = [
    "Budget",
    "ClassShare",
    "SegServeClientError",
    "SegmentationResult",
    "Timings",
    "read_image",
]


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
