"""One error hierarchy for the whole service.

Every error a client can see is a :class:`SegServeError` with a *kind*; the kind
decides the HTTP status and the gRPC status code, once, here. Transports map
errors through :func:`http_status` / :func:`grpc_code_name` and never invent
their own codes.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorKind(enum.Enum):
    """What went wrong, from the client's point of view: (HTTP status, gRPC code name)."""

    MALFORMED = (400, "INVALID_ARGUMENT")
    UNAUTHENTICATED = (401, "UNAUTHENTICATED")
    NOT_FOUND = (404, "NOT_FOUND")
    TOO_LARGE = (413, "RESOURCE_EXHAUSTED")
    UNSUPPORTED_MEDIA = (415, "INVALID_ARGUMENT")
    INVALID_PARAMETER = (422, "INVALID_ARGUMENT")
    REQUEST_TIMEOUT = (408, "DEADLINE_EXCEEDED")
    UNAVAILABLE = (503, "UNAVAILABLE")
    OVERLOADED = (503, "RESOURCE_EXHAUSTED")
    DEADLINE_EXCEEDED = (504, "DEADLINE_EXCEEDED")
    INTERNAL = (500, "INTERNAL")

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_code_name(self) -> str:
        return self.value[1]


#: Longest value a message quotes back (a client's model name, a header...).
ECHO_CHARS = 64
#: Longest message sent to a client: a gRPC error travels in trailers (8 KiB by default).
MAX_MESSAGE_CHARS = 1024


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters with an ellipsis."""
    text = str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


class SegServeError(Exception):
    """Base of every error shown to a client: a kind, a stable code and a message."""

    kind: ErrorKind = ErrorKind.INTERNAL
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        if len(message) > MAX_MESSAGE_CHARS:  # a long echoed value must not break transport
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross Ray process boundaries; keep the code when pickled.
        return (_rebuild, (type(self), self.message, self.code))

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


def _rebuild(cls: type[SegServeError], message: str, code: str) -> SegServeError:
    return cls(message, code=code)


class MalformedRequest(SegServeError):
    kind = ErrorKind.MALFORMED
    code = "malformed_request"


class CorruptImage(SegServeError):
    """The bytes claim a known image format but cannot be decoded (truncated, damaged)."""

    kind = ErrorKind.MALFORMED
    code = "corrupt_image"


class UnknownModel(SegServeError):
    kind = ErrorKind.NOT_FOUND
    code = "unknown_model"


class PayloadTooLarge(SegServeError):
    kind = ErrorKind.TOO_LARGE
    code = "payload_too_large"


class ImageTooLarge(SegServeError):
    kind = ErrorKind.TOO_LARGE
    code = "image_too_large"


class UnsupportedImage(SegServeError):
    kind = ErrorKind.UNSUPPORTED_MEDIA
    code = "unsupported_image"


class InvalidParameter(SegServeError):
    kind = ErrorKind.INVALID_PARAMETER
    code = "invalid_parameter"


class NotReady(SegServeError):
    kind = ErrorKind.UNAVAILABLE
    code = "not_ready"


class Overloaded(SegServeError):
    kind = ErrorKind.OVERLOADED
    code = "overloaded"


class DeadlineExceeded(SegServeError):
    kind = ErrorKind.DEADLINE_EXCEEDED
    code = "deadline_exceeded"


class RequestTimeout(SegServeError):
    """The request body did not arrive within ``limits.body_timeout_s``."""

    kind = ErrorKind.REQUEST_TIMEOUT
    code = "body_timeout"


class Unauthenticated(SegServeError):
    """No API key, or not one of the configured keys."""

    kind = ErrorKind.UNAUTHENTICATED
    code = "unauthenticated"


class InternalError(SegServeError):
    kind = ErrorKind.INTERNAL
    code = "internal"


class ModelLoadError(Exception):
    """A model could not be loaded at start-up. Not a client error: it stops the replica."""


class ImageStructureRejected(CorruptImage):
    """The image breaks a structural rule checked before decoding (scan counts, chunk counts,
    tile sizes...): cheap to detect, expensive to decode. The code names the rule."""

    code = "image_structure"


class DecodeMemoryExceeded(ImageTooLarge):
    """Decoding the image would need more memory than ``max_decode_bytes`` allows."""

    code = "decode_memory_exceeded"


class DecodeTimeout(CorruptImage):
    """The decode ran past its deadline and its worker was killed.

    A 400, not a 503: the structural pre-checks bound what a legitimate image costs, so an
    image that still decodes past the deadline is treated as hostile, and a 503 would invite
    clients to retry it.
    """

    code = "decode_timeout"
