"""What every protocol module shares: turning any exception into a client error, and
checking API keys.

Errors from the service are :class:`SegServeError` already (and Ray's own are
translated where Ray is called, in the gateway's model endpoints); anything else
is a bug, logged with a reference the client can quote, never shown as a trace.
Keys are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Iterable

from deployments.pipeline.errors import InternalError, SegServeError, Unauthenticated

logger = logging.getLogger("ray.serve")


def as_client_error(error: BaseException) -> SegServeError:
    """The client-facing form of ``error``; unexpected ones are logged here, once."""
    if isinstance(error, SegServeError):
        return error
    reference = uuid.uuid4().hex[:12]
    logger.error("unhandled error (reference %s)", reference, exc_info=error)
    return InternalError(f"internal error (reference {reference})")


class ApiKeys:
    """The accepted API keys; empty means every request is accepted."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:  # never the keys themselves
        return f"ApiKeys({len(self._keys)} keys)"

    @staticmethod
    def from_headers(authorization: str | None, api_key: str | None) -> str | None:
        """The key an HTTP request or gRPC call presents: ``Authorization: Bearer <key>``
        (a bare key is taken too) or ``X-API-Key``."""
        if authorization:
            scheme, _, rest = authorization.strip().partition(" ")
            return rest.strip() if scheme.lower() == "bearer" and rest else authorization.strip()
        return api_key.strip() if api_key else None

    def check(self, presented: str | None) -> None:
        """Raise 401 ``unauthenticated`` unless ``presented`` is one of the keys."""
        if not self._keys:
            return
        if not presented:
            raise Unauthenticated(
                "an API key is required: send 'Authorization: Bearer <key>' "
                "(or 'X-API-Key: <key>'; over gRPC the 'authorization' metadata)",
            )
        candidate = presented.encode("utf-8", "replace")
        # Compare with every key (no early exit), each in constant time.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise Unauthenticated("the API key is not valid")
