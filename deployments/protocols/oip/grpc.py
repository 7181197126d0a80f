"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``).

:class:`OipGrpc` holds the methods Ray Serve's gRPC proxy calls by name on the gateway
(it is one more base class of the gateway deployment, beside ``SegServeGrpc``; the
names do not clash with segserve.v1's); the same object is a grpc.aio servicer, so
tests serve it in-process with :class:`LocalOipGrpc`. Errors go through the one
error mapping of :mod:`deployments.protocols.grpc` (``set_error``). Responses carry every output in
``raw_output_contents``, in order: tritonclient's gRPC client reads nothing else.
"""

from __future__ import annotations

from typing import TypeVar

from deployments.pipeline.errors import PayloadTooLarge
from deployments.pipeline.service import SegmentationService
from deployments.protocols import wire
from deployments.protocols.grpc import CallContext, grpc_errors
from deployments.protocols.oip import codecs, dataplane
from deployments.protocols.oip import open_inference_grpc_pb2 as pb

Request = TypeVar("Request")
Response = TypeVar("Response")


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

    @grpc_errors(pb.ServerLiveResponse)
    async def ServerLive(
        self, request: pb.ServerLiveRequest, grpc_context: CallContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @grpc_errors(pb.ServerReadyResponse)
    async def ServerReady(
        self, request: pb.ServerReadyRequest, grpc_context: CallContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not await dataplane.server_ready(self.service))

    @grpc_errors(pb.ModelReadyResponse)
    async def ModelReady(
        self, request: pb.ModelReadyRequest, grpc_context: CallContext
    ) -> pb.ModelReadyResponse:
        ready = await dataplane.model_ready(self.service, request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @grpc_errors(pb.ServerMetadataResponse)
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, grpc_context: CallContext
    ) -> pb.ServerMetadataResponse:
        return codecs.server_metadata_proto(dataplane.server_metadata())

    @grpc_errors(pb.ModelMetadataResponse)
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, grpc_context: CallContext
    ) -> pb.ModelMetadataResponse:
        described = await dataplane.model_metadata(self.service, request.name, request.version)
        return codecs.model_metadata_proto(described)

    @grpc_errors(pb.ModelInferResponse)
    async def ModelInfer(
        self, request: pb.ModelInferRequest, grpc_context: CallContext
    ) -> pb.ModelInferResponse:
        dataplane.resolve(self.service, request.model_name, request.model_version)
        limit = self.service.config.limits.max_request_bytes
        size = request.ByteSize()
        if size > limit:
            raise PayloadTooLarge(f"the request is {size} bytes; the limit is {limit} bytes")
        with self.service.admit(request.model_name) as ticket:  # a full model: before decoding
            decoded = codecs.decode_grpc_request(request)
            result = await dataplane.infer(
                self.service,
                request.model_name,
                request.model_version,
                decoded,
                _deadline_ms(grpc_context),
                ticket,
            )
        return codecs.encode_grpc_response(
            decoded, result.outputs, model_name=request.model_name, parameters=result.parameters
        )


class LocalOipGrpc(OipGrpc):
    """The methods over a given service, to serve with a plain ``grpc.aio`` server."""

    def __init__(self, service: SegmentationService) -> None:
        self.service = service
