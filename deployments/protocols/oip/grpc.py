"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``).

:class:`OipGrpc` holds the methods Ray Serve's gRPC proxy calls by name on the gateway
(it is one more base class of the gateway deployment, beside ``SegServeGrpc``; the
names do not clash with segserve.v1's); the same object is a grpc.aio servicer, so
tests serve it in-process with :class:`LocalOipGrpc`. Errors go through the one
error mapping of :mod:`deployments.protocols.grpc` (``set_error``). Responses carry every output in
``raw_output_contents``, in order: tritonclient's gRPC client reads nothing else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from deployments.pipeline.errors import PayloadTooLarge
from deployments.pipeline.service import SegmentationService
from deployments.protocols import wire
from deployments.protocols.grpc import CallContext, Method, set_error
from deployments.protocols.oip import codecs, dataplane
from deployments.protocols.oip import open_inference_grpc_pb2 as pb

Request = TypeVar("Request")
Response = TypeVar("Response")


def oip_errors(
    empty: Callable[[], Response],
) -> Callable[[Method[Request, Response]], Method[Request, Response]]:
    """Answer any exception of the method as a status (with ``empty()`` as the body), through
    :func:`deployments.protocols.grpc.set_error`, the one mapping.

    The call context is named ``grpc_context``: Ray Serve's replica passes it only as a
    keyword argument of that name (``ray.serve._private.constants.GRPC_CONTEXT_ARG_NAME``)
    and calls the method with the request alone otherwise; grpc.aio passes it by position.
    """

    def decorate(method: Method[Request, Response]) -> Method[Request, Response]:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Request, grpc_context: CallContext) -> Response:
            try:
                return await method(self, request, grpc_context)
            except Exception as e:
                set_error(grpc_context, e)
                return empty()

        return wrapper

    return decorate


def _deadline_ms(grpc_context: CallContext) -> float | None:
    """The call's own deadline, when the client sent it as segserve.v1 clients do."""
    value = wire.budget_from_metadata(grpc_context.invocation_metadata())
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # the budget parameter or the timeout still apply; a bad header is moot


class OipGrpc:
    """ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer."""

    service: SegmentationService

    @oip_errors(pb.ServerLiveResponse)
    async def ServerLive(
        self, request: pb.ServerLiveRequest, grpc_context: CallContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @oip_errors(pb.ServerReadyResponse)
    async def ServerReady(
        self, request: pb.ServerReadyRequest, grpc_context: CallContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not await dataplane.server_ready(self.service))

    @oip_errors(pb.ModelReadyResponse)
    async def ModelReady(
        self, request: pb.ModelReadyRequest, grpc_context: CallContext
    ) -> pb.ModelReadyResponse:
        ready = await dataplane.model_ready(self.service, request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @oip_errors(pb.ServerMetadataResponse)
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, grpc_context: CallContext
    ) -> pb.ServerMetadataResponse:
        return codecs.server_metadata_proto(dataplane.server_metadata())

    @oip_errors(pb.ModelMetadataResponse)
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, grpc_context: CallContext
    ) -> pb.ModelMetadataResponse:
        described = await dataplane.model_metadata(self.service, request.name, request.version)
        return codecs.model_metadata_proto(described)

    @oip_errors(pb.ModelInferResponse)
    async def ModelInfer(
        self, request: pb.ModelInferRequest, grpc_context: CallContext
    ) -> pb.ModelInferResponse:
        dataplane.resolve(self.service, request.model_name, request.model_version)
        limit = self.service.config.limits.max_request_bytes
        size = request.ByteSize()
        if size > limit:
            raise PayloadTooLarge(f"the request is {size} bytes; the limit is {limit} bytes")
        decoded = codecs.decode_grpc_request(request)
        result = await dataplane.infer(
            self.service,
            request.model_name,
            request.model_version,
            decoded,
            _deadline_ms(grpc_context),
        )
        return codecs.encode_grpc_response(
            decoded, result.outputs, model_name=request.model_name, parameters=result.parameters
        )


class LocalOipGrpc(OipGrpc):
    """The methods over a given service, to serve with a plain ``grpc.aio`` server."""

    def __init__(self, service: SegmentationService) -> None:
        self.service = service
