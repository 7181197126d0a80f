"""The ``segserve.v1`` gRPC methods over the segmentation service.

:class:`SegServeGrpc` holds the methods Ray Serve's gRPC proxy calls by name on
the gateway (it is a base class of the gateway deployment); the same object is
a grpc.aio servicer, so tests serve it in-process with a plain ``grpc.aio``
server. :func:`grpc_errors` maps every exception once, for every method, to a
status code, details and the ``segserve-error-code`` trailing metadata.

The call context parameter must be named ``grpc_context``: Ray Serve passes it
only to methods whose signature has a parameter of that name.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import grpc

from deployments.pipeline.errors import PayloadTooLarge
from deployments.pipeline.options import parse_options
from deployments.pipeline.service import SegmentationService
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import wire
from deployments.protocols.common import ApiKeys, as_client_error
from deployments.protocols.wire import proto as wire_proto


class CallContext(Protocol):
    """What a method needs of its call: Ray's RayServegRPCContext or grpc.aio's context."""

    def invocation_metadata(self) -> Any: ...

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def set_trailing_metadata(self, trailing_metadata: Any) -> None: ...


Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[[Any, Request, CallContext], Awaitable[Response]]


def set_error(context: CallContext, error: BaseException) -> None:
    """Status code, details and the service's error code for ``error``."""
    client_error = as_client_error(error)
    context.set_code(getattr(grpc.StatusCode, client_error.kind.grpc_code_name))
    context.set_details(client_error.message)
    context.set_trailing_metadata([(wire.ERROR_CODE_METADATA_KEY, client_error.code)])


def check_api_key(service: SegmentationService, context: CallContext) -> None:
    """UNAUTHENTICATED unless the call's ``authorization`` metadata (``Bearer <key>`` or
    the bare key; ``x-api-key`` too) holds a configured key; no-op without keys."""
    if not service.api_keys:
        return
    metadata = {str(k).lower(): str(v) for k, v in context.invocation_metadata() or ()}
    presented = ApiKeys.from_headers(metadata.get("authorization"), metadata.get("x-api-key"))
    ApiKeys(service.api_keys).check(presented)


def grpc_errors(
    empty: Callable[[], Response],
) -> Callable[[Method[Request, Response]], Method[Request, Response]]:
    """Check the API key, then answer any exception of the method as a status (with
    ``empty()`` as the body)."""

    def decorate(method: Method[Request, Response]) -> Method[Request, Response]:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Request, grpc_context: CallContext) -> Response:
            try:
                check_api_key(self.service, grpc_context)
                return await method(self, request, grpc_context)
            except Exception as e:
                set_error(grpc_context, e)
                return empty()

        return wrapper

    return decorate


class SegServeGrpc:
    """``segserve.v1.Segmentation``: Segment and ListModels."""

    service: SegmentationService

    @grpc_errors(pb.SegmentResponse)
    async def Segment(
        self, request: pb.SegmentRequest, grpc_context: CallContext
    ) -> pb.SegmentResponse:
        from_deadline = not request.HasField("budget_ms")
        budget: str | float | None = (
            wire.budget_from_metadata(grpc_context.invocation_metadata())
            if from_deadline
            else request.budget_ms
        )

        def optional(name: str) -> Any:
            return getattr(request, name) if request.HasField(name) else None

        options = parse_options(
            request.model or None,
            budget,
            ",".join(request.outputs) or None,
            request.mask_size or None,
            optional("strict"),
            min_area=optional("min_area"),
            simplify=optional("simplify"),
            max_classes=optional("max_classes"),
            alpha=optional("alpha"),
            overlay_format=request.overlay_format or None,
            legend=optional("legend"),
        )
        if from_deadline and options.budget_ms is not None:
            # The call's deadline bounds the answer but does not pick the model.
            options = replace(options, budget_is_deadline=True)
        limit = self.service.config.limits.max_request_bytes
        if len(request.image) > limit:
            raise PayloadTooLarge(
                f"image is {len(request.image)} bytes; the limit is {limit} bytes"
            )
        result = await self.service.segment(request.image, options)
        return result.to_proto()

    @grpc_errors(pb.ListModelsResponse)
    async def ListModels(
        self, request: pb.ListModelsRequest, grpc_context: CallContext
    ) -> pb.ListModelsResponse:
        described = await self.service.describe_all()
        return pb.ListModelsResponse(
            default_model=self.service.default_model,
            models=[wire_proto.model_info_to_proto(d) for d in described],
        )


class LocalSegServeGrpc(SegServeGrpc):
    """The methods over a given service, to serve with a plain ``grpc.aio`` server."""

    def __init__(self, service: SegmentationService) -> None:
        self.service = service
