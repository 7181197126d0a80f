"""The ingress deployment: HTTP (FastAPI) in front of the transport-free service.

This module handles only what is HTTP- or Ray-specific: reading the body within
the byte limit, multipart, query parameters, content negotiation, readiness,
and mapping errors (ours and Ray's) to status codes. Everything else is
:class:`SegmentationService`.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import replace
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError
from ray.serve import metrics
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from deployments.config import GatewayConfig, ModelConfig, deployment_name
from deployments.pipeline.errors import (
    InternalError,
    InvalidParameter,
    MalformedRequest,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    SegServeError,
    UnknownModel,
    UnsupportedImage,
)
from deployments.pipeline.options import SegmentOptions, parse_options
from deployments.pipeline.process import peak_rss_mb
from deployments.pipeline.service import (
    ModelCard,
    Prediction,
    PredictRequest,
    RoutingSettings,
    SegmentationService,
    SegmentResult,
)
from deployments.protocols import convert
from deployments.protocols import segserve_pb2 as pb

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="segserve",
    version="1",
    description="Semantic segmentation on Ray Serve: POST an image, get a label map.",
)

_READY_TIMEOUT_S = 5.0
_REPLICAS_REFRESH_S = 5.0
_RAW_TYPES = ("image/", "application/octet-stream")


def as_client_error(error: BaseException) -> SegServeError:
    """Map any exception from the service or from Ray to the one error hierarchy."""
    if isinstance(error, SegServeError):
        return error
    if isinstance(error, RayTaskError):
        cause = error.cause if hasattr(error, "cause") else None
        if isinstance(cause, BaseException):
            return as_client_error(cause)
    if isinstance(error, BackPressureError):
        return Overloaded("the model's queue is full; retry later")
    if isinstance(error, RayActorError | NodeDiedError | ObjectLostError):
        return NotReady("a model replica died while serving the request; retry")
    if isinstance(error, DeploymentUnavailableError | ReplicaUnavailableError):
        return NotReady("no model replica is available right now; retry")
    return InternalError(f"internal error (reference {uuid.uuid4().hex[:12]})")


def error_response(error: SegServeError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.kind.http_status == 503 else None
    return JSONResponse(error.to_dict(), status_code=error.kind.http_status, headers=headers)


@app.exception_handler(SegServeError)
async def _on_segserve_error(request: Request, error: SegServeError) -> JSONResponse:
    return error_response(error)


@app.exception_handler(RequestValidationError)
async def _on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    details = "; ".join(
        f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()
    )
    return error_response(InvalidParameter(details or "invalid request"))


@app.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(error.detail)}}, status_code=error.status_code
    )


@app.exception_handler(Exception)
async def _on_unexpected(request: Request, error: Exception) -> JSONResponse:
    client_error = as_client_error(error)
    if isinstance(client_error, InternalError):
        logger.exception("unhandled error: %s", client_error.message, exc_info=error)
    return error_response(client_error)


class RayModelEndpoint:
    """A model server deployment seen as a :class:`ModelEndpoint`."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self.handle = handle
        self._card: ModelCard | None = None

    async def card(self) -> ModelCard:
        if self._card is None:
            try:
                self._card = await self.handle.card.remote()
            except Exception as e:
                raise as_client_error(e) from e
        return self._card

    async def predict(self, request: PredictRequest) -> Prediction:
        try:
            result: Prediction = await self.handle.predict.remote(request)
        except Exception as e:
            raise as_client_error(e) from e
        return result


def _set_grpc_error(grpc_context: RayServegRPCContext, error: BaseException) -> None:
    client_error = as_client_error(error)
    if isinstance(client_error, InternalError):
        logger.exception("unhandled error: %s", client_error.message, exc_info=error)
    grpc_context.set_code(getattr(grpc.StatusCode, client_error.kind.grpc_code_name))
    grpc_context.set_details(client_error.message)
    grpc_context.set_trailing_metadata([(convert.ERROR_CODE_METADATA_KEY, client_error.code)])


def _accepts_png_only(accept: str) -> bool:
    """Accept asks for image/png and not for JSON."""
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]
    return "image/png" in kinds and "application/json" not in kinds


def _with_mask(options: SegmentOptions) -> SegmentOptions:
    return replace(options, outputs=options.outputs | {"mask"})


async def _image_from_multipart(request: Request, body: bytes) -> bytes:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=4, max_fields=16).parse()
    except MultiPartException as e:
        raise MalformedRequest(f"malformed multipart body: {e.message}") from e
    part = form.get("image")
    if part is None:
        raise MalformedRequest("multipart body has no 'image' field")
    if isinstance(part, str):
        return part.encode("latin-1")
    data: bytes = await part.read()
    await part.close()
    return data


def _replica_counts(deployment: str) -> dict[str, int]:
    """Replica states of a deployment of this application, e.g. {"RUNNING": 2}."""
    try:
        app_name = serve.get_replica_context().app_name
        status = serve.status().applications[app_name].deployments[deployment]
        return {str(state): int(count) for state, count in status.replica_states.items()}
    except Exception:  # status is informational; never fail /v1/models over it
        return {}


@serve.deployment
@serve.ingress(app)
class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        models: list[ModelConfig],
        handles: Mapping[str, DeploymentHandle[Any]],
    ) -> None:
        self.config = config
        self.routes = metrics.Counter(
            "segserve_routed_requests",
            "Answered requests by model, how it was chosen and whether the budget was met.",
            tag_keys=("model", "chosen_by", "budget_met"),  # type: ignore[arg-type]
        )
        self.model_configs = {m.name: m for m in models}
        self.handles = dict(handles)
        self.endpoints = {name: RayModelEndpoint(h) for name, h in self.handles.items()}
        self.service = SegmentationService(
            self.endpoints,
            default_model=config.default_model or models[0].name,
            limits=config.limits.image_limits(),
            png_compress_level=config.png_compress_level,
            routing=RoutingSettings(
                margin_sigmas=config.routing.margin_sigmas,
                half_life=config.routing.half_life,
                shared_compute=config.routing.shared_compute,
                max_upgrade_utilization=config.routing.max_upgrade_utilization,
            ),
            replicas=self._running_replicas,
        )
        # RUNNING replicas per model (autoscaling changes them), refreshed in the background.
        self._replica_cache: dict[str, int] = {}
        self._replicas_at = 0.0
        self._refreshing = False

    def _running_replicas(self, name: str) -> int | None:
        """Running replicas of a model as last seen (None until known); never blocks."""
        if not self._refreshing and time.monotonic() - self._replicas_at > _REPLICAS_REFRESH_S:
            self._refreshing = True
            asyncio.get_running_loop().create_task(self._refresh_replicas())
        return self._replica_cache.get(name)

    async def _refresh_replicas(self) -> None:
        try:
            counts = await asyncio.to_thread(
                lambda: {n: _replica_counts(deployment_name(n)) for n in self.handles}
            )
            self._replica_cache = {
                name: states.get("RUNNING", 0) for name, states in counts.items() if states
            }
        finally:
            self._replicas_at = time.monotonic()
            self._refreshing = False

    # ------------------------------------------------------------ segmentation

    @app.post("/v1/segment", response_model=None)
    async def segment(
        self,
        request: Request,
        model: str | None = None,
        budget_ms: str | None = None,
        outputs: str | None = None,
        mask_size: str | None = None,
        strict: str | None = None,
    ) -> Response:
        options = parse_options(model, budget_ms, outputs, mask_size, strict)
        wants_png = _accepts_png_only(request.headers.get("accept", ""))
        if wants_png:
            options = _with_mask(options)
        data = await self._read_image(request)
        result = await self._segment(data, options)
        if wants_png:
            assert result.mask_png is not None
            return Response(
                result.mask_png,
                media_type="image/png",
                headers={
                    "X-Segserve-Model": result.model,
                    "X-Segserve-Weights": result.weights,
                    "X-Segserve-Batch-Size": str(result.batch_size),
                    "X-Segserve-Total-Ms": f"{result.timings_ms['total']:.1f}",
                    "X-Segserve-Chosen-By": str(result.budget.get("chosen_by", "")),
                },
            )
        return JSONResponse(result.to_json())

    async def _segment(self, data: bytes, options: SegmentOptions) -> SegmentResult:
        result = await self.service.segment(data, options)
        met = result.budget.get("met")
        self.routes.inc(
            tags={
                "model": result.model,
                "chosen_by": str(result.budget.get("chosen_by", "")),
                "budget_met": "none" if met is None else str(met).lower(),
            }
        )
        return result

    async def _read_image(self, request: Request) -> bytes:
        limit = self.config.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith("multipart/form-data"):
            return await _image_from_multipart(request, bytes(body))
        if content_type and not content_type.startswith(_RAW_TYPES):
            raise UnsupportedImage(
                f"Content-Type {content_type!r} is not an image; send image/* bytes or "
                "multipart/form-data with an 'image' field"
            )
        return bytes(body)

    # ------------------------------------------------------------ gRPC (segserve.v1)

    async def Segment(
        self, request: pb.SegmentRequest, grpc_context: RayServegRPCContext
    ) -> pb.SegmentResponse:
        try:
            from_deadline = not request.HasField("budget_ms")
            budget: str | float | None = (
                convert.budget_from_metadata(grpc_context.invocation_metadata())
                if from_deadline
                else request.budget_ms
            )
            options = parse_options(
                request.model or None,
                budget,
                ",".join(request.outputs) or None,
                request.mask_size or None,
                request.strict if request.HasField("strict") else None,
            )
            if from_deadline and options.budget_ms is not None:
                # The call's deadline bounds the answer but does not pick the model.
                options = replace(options, budget_is_deadline=True)
            if len(request.image) > self.config.limits.max_request_bytes:
                raise PayloadTooLarge(
                    f"image is {len(request.image)} bytes; "
                    f"the limit is {self.config.limits.max_request_bytes} bytes"
                )
            result = await self._segment(request.image, options)
            return convert.segment_response(result)
        except Exception as e:
            _set_grpc_error(grpc_context, e)
            return pb.SegmentResponse()

    async def ListModels(
        self, request: pb.ListModelsRequest, grpc_context: RayServegRPCContext
    ) -> pb.ListModelsResponse:
        try:
            described = await asyncio.gather(*(self._describe(n) for n in self.handles))
            return pb.ListModelsResponse(
                default_model=self.service.default_model,
                models=[convert.model_info(d) for d in described],
            )
        except Exception as e:
            _set_grpc_error(grpc_context, e)
            return pb.ListModelsResponse()

    # ------------------------------------------------------------ models, health

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        names = list(self.handles)
        described = await asyncio.gather(*(self._describe(n) for n in names))
        return {
            "default": self.service.default_model,
            "models": described,
            "gateway": {"peak_rss_mb": round(peak_rss_mb(), 1)},
        }

    @app.get("/v1/models/{name}")
    async def get_model(self, name: str) -> dict[str, Any]:
        if name not in self.handles:
            raise UnknownModel(
                f"unknown model {name!r}; available: {', '.join(sorted(self.handles))}"
            )
        return await self._describe(name)

    async def _describe(self, name: str) -> dict[str, Any]:
        config = self.model_configs[name]
        try:
            info: dict[str, Any] = await asyncio.wait_for(
                self.handles[name].describe.remote(), _READY_TIMEOUT_S
            )
            info["ready"] = True
        except Exception as e:  # a model that is loading or down is listed, not hidden
            info = {
                "name": name,
                "framework": config.framework,
                "source": config.source,
                "weights_policy": config.weights,
                "ready": False,
                "error": as_client_error(e).message
                if not isinstance(e, TimeoutError)
                else "not answering (loading?)",
            }
        info["replicas"] = await asyncio.to_thread(_replica_counts, deployment_name(name))
        info["num_replicas"] = config.num_replicas
        info["routing"] = self.service.routing_info(name)
        if config.autoscaling_config is not None:
            info["autoscaling"] = config.autoscaling_config.ray_options()
        return info

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz(self) -> Response:
        async def check(name: str) -> str | None:
            try:
                await asyncio.wait_for(self.handles[name].ready.remote(), _READY_TIMEOUT_S)
                return None
            except Exception:
                return name

        failing = [n for n in await asyncio.gather(*(check(n) for n in self.handles)) if n]
        if failing:
            return error_response(NotReady(f"models not ready: {', '.join(failing)}"))
        return JSONResponse({"status": "ready", "models": sorted(self.handles)})
