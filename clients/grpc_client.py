"""gRPC clients (grpc and grpc.aio), sync and async, for the segserve.v1 service.

A ``timeout`` is the call's gRPC deadline; unless ``budget_ms`` is given it is also
sent as the request's budget (metadata ``segserve-budget-ms``: Ray Serve's proxy
does not hand the deadline itself to the service), so the service drops the
request rather than run it after the caller has given up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from clients.http import api_key_or_env
from clients.result import DrawOptions, SegmentationResult, SegServeClientError, read_image
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.wire import (
    BUDGET_METADATA_KEY,
    ERROR_CODE_METADATA_KEY,
)
from deployments.protocols.wire.proto import models_from_proto

DEFAULT_TARGET = "localhost:9000"
#: Photos of tens of megabytes each way; gRPC's default is 4 MB.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def _request(
    image: bytes | str | Path,
    model: str | None,
    budget_ms: float | None,
    outputs: list[str] | None,
    mask_size: str | None,
    strict: bool | None = None,
    draw: DrawOptions | None = None,
) -> pb.SegmentRequest:
    request = pb.SegmentRequest(
        image=read_image(image), model=model or "", mask_size=mask_size or "", outputs=outputs or []
    )
    if budget_ms is not None:
        request.budget_ms = budget_ms
    if strict is not None:
        request.strict = strict
    draw = draw or DrawOptions()
    if draw.min_area is not None:
        request.min_area = draw.min_area
    if draw.simplify is not None:
        request.simplify = draw.simplify
    if draw.max_classes is not None:
        request.max_classes = draw.max_classes
    if draw.alpha is not None:
        request.alpha = draw.alpha
    if draw.legend is not None:
        request.legend = draw.legend
    request.overlay_format = draw.overlay_format or ""
    return request


def _metadata(
    budget_ms: float | None, timeout: float | None, auth: list[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    metadata = list(auth or [])
    if budget_ms is None and timeout is not None:
        metadata.append((BUDGET_METADATA_KEY, f"{timeout * 1000:.0f}"))
    return metadata


def _auth_metadata(api_key: str | None) -> list[tuple[str, str]]:
    key = api_key_or_env(api_key)
    return [("authorization", f"Bearer {key}")] if key else []


def _error(error: grpc.RpcError, target: str) -> SegServeClientError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        return SegServeClientError("unreachable", f"cannot reach {target}: {details}", code.name)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return SegServeClientError("deadline_exceeded", details, code.name)
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    pairs: Any = metadata or ()  # grpc-stubs types metadata as opaque objects
    trailing: dict[str, Any] = {str(key): value for key, value in pairs}
    service_code = str(trailing.get(ERROR_CODE_METADATA_KEY, "")) or code.name.lower()
    return SegServeClientError(service_code, details, code.name)


class GrpcSegServeClient:
    """``with GrpcSegServeClient("localhost:9000") as client: client.segment("photo.jpg")``"""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = 120.0,
        api_key: str | None = None,
    ) -> None:
        """``api_key``: sent as ``authorization`` metadata; by default ``$SEGSERVE_API_KEY``."""
        self.target = target
        self.timeout = timeout
        self._auth = _auth_metadata(api_key)
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.SegmentationStub(self._channel)

    def segment(
        self,
        image: bytes | str | Path,
        model: str | None = None,
        budget_ms: float | None = None,
        outputs: list[str] | None = None,
        mask_size: str | None = None,
        timeout: float | None = None,
        strict: bool | None = None,
        draw: DrawOptions | None = None,
    ) -> SegmentationResult:
        """Segment one image; ``outputs`` from classes, mask, contours, rle, overlay."""
        request = _request(image, model, budget_ms, outputs, mask_size, strict, draw)
        deadline = timeout or self.timeout
        try:
            response = self._stub.Segment(
                request, timeout=deadline, metadata=_metadata(budget_ms, deadline, self._auth)
            )
        except grpc.RpcError as e:
            raise _error(e, self.target) from e
        return SegmentationResult.from_proto(response)

    def models(self) -> dict[str, Any]:
        try:
            return models_from_proto(
                self._stub.ListModels(
                    pb.ListModelsRequest(), timeout=self.timeout, metadata=self._auth
                )
            )
        except grpc.RpcError as e:
            raise _error(e, self.target) from e

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcSegServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGrpcSegServeClient:
    """The grpc.aio twin of :class:`GrpcSegServeClient`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = 120.0,
        api_key: str | None = None,
    ) -> None:
        """``api_key``: sent as ``authorization`` metadata; by default ``$SEGSERVE_API_KEY``."""
        self.target = target
        self.timeout = timeout
        self._auth = _auth_metadata(api_key)
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.SegmentationStub(self._channel)

    async def segment(
        self,
        image: bytes | str | Path,
        model: str | None = None,
        budget_ms: float | None = None,
        outputs: list[str] | None = None,
        mask_size: str | None = None,
        timeout: float | None = None,
        strict: bool | None = None,
        draw: DrawOptions | None = None,
    ) -> SegmentationResult:
        """Segment one image; ``outputs`` from classes, mask, contours, rle, overlay."""
        request = _request(image, model, budget_ms, outputs, mask_size, strict, draw)
        deadline = timeout or self.timeout
        try:
            response = await self._stub.Segment(
                request, timeout=deadline, metadata=_metadata(budget_ms, deadline, self._auth)
            )
        except grpc.RpcError as e:
            raise _error(e, self.target) from e
        return SegmentationResult.from_proto(response)

    async def models(self) -> dict[str, Any]:
        try:
            response = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self.timeout, metadata=self._auth
            )
        except grpc.RpcError as e:
            raise _error(e, self.target) from e
        return models_from_proto(response)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncGrpcSegServeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
