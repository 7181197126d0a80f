"""What every protocol module shares: turning any exception into a client error.

Errors from the service are :class:`SegServeError` already (and Ray's own are
translated where Ray is called, in the gateway's model endpoints); anything else
is a bug, logged with a reference the client can quote, never shown as a trace.
"""

from __future__ import annotations

import logging
import uuid

from deployments.pipeline.errors import InternalError, SegServeError

logger = logging.getLogger("ray.serve")


def as_client_error(error: BaseException) -> SegServeError:
    """The client-facing form of ``error``; unexpected ones are logged here, once."""
    if isinstance(error, SegServeError):
        return error
    reference = uuid.uuid4().hex[:12]
    logger.error("unhandled error (reference %s)", reference, exc_info=error)
    return InternalError(f"internal error (reference {reference})")
