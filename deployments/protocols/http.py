"""The native HTTP API (``/v1``, health and readiness) over the segmentation service.

Only what is HTTP-specific happens here: reading the body within the byte limit,
multipart forms, query parameters, content negotiation, and error envelopes
(``{"error": {"code", "message"}}`` with the status of the error's kind).
:func:`build_app` makes the FastAPI app the gateway serves; tests run the same
app in-process over local model endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.pipeline.errors import (
    InvalidParameter,
    MalformedRequest,
    NotReady,
    PayloadTooLarge,
    RequestTimeout,
    SegServeError,
    UnsupportedImage,
    echo,
)
from deployments.pipeline.options import SegmentOptions, parse_options
from deployments.pipeline.probe import PREFIX_CHECK_BYTES, ImageLimits, refuse_prefix
from deployments.pipeline.process import peak_rss_mb
from deployments.pipeline.service import SegmentationService
from deployments.protocols.common import ApiKeys, as_client_error

logger = logging.getLogger("ray.serve")

_RAW_TYPES = ("image/", "application/octet-stream")
#: The body ``read_image`` reads, for the OpenAPI document (FastAPI cannot infer it).
SEGMENT_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
        },
    }
}
#: Another protocol's routes on the same app: ``register(app, service)``.
Registration = Callable[[FastAPI, SegmentationService], None]


def error_response(error: SegServeError) -> JSONResponse:
    headers: dict[str, str] = {}
    if error.kind.http_status == 503:
        headers["Retry-After"] = "1"
    elif error.kind.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="segserve"'
    elif error.kind.http_status == 408:
        headers["Connection"] = "close"  # the rest of the body is never read
    return JSONResponse(error.to_dict(), status_code=error.kind.http_status, headers=headers)


def _accepts_png_only(accept: str) -> bool:
    """Accept asks for image/png and not for JSON."""
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]
    return "image/png" in kinds and "application/json" not in kinds


async def _image_from_multipart(request: Request, body: AsyncGenerator[bytes, None]) -> bytes:
    try:
        form = await MultiPartParser(request.headers, body, max_files=4, max_fields=16).parse()
    except SegServeError:
        raise  # the body's own limits (bytes, deadline), raised inside the stream
    except MultiPartException as e:
        raise MalformedRequest(f"malformed multipart body: {e.message}") from e
    except Exception as e:  # python-multipart raises its own types on hostile forms
        raise MalformedRequest(f"malformed multipart body: {type(e).__name__}") from e
    try:
        part = form.get("image")
        if part is None:
            raise MalformedRequest("multipart body has no 'image' field")
        if isinstance(part, str):
            # A text field: Starlette decoded it (its charset, else latin-1); only latin-1
            # text maps back to the bytes that were sent.
            try:
                return part.encode("latin-1")
            except UnicodeEncodeError as e:
                raise MalformedRequest(
                    "the multipart 'image' field is text, not a file: send it as a file part "
                    "(with a filename), e.g. curl -F image=@photo.jpg",
                    code="multipart_text_field",
                ) from e
        data: bytes = await part.read()
        return data
    finally:
        await form.close()


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks, stopping with 413 as soon as more than ``limit`` bytes came."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        yield chunk


async def _read_body(
    request: Request, limit: int, multipart: bool, limits: ImageLimits | None
) -> bytes:
    if multipart:
        return await _image_from_multipart(request, _limited(request, limit))
    body = bytearray()
    # Judged at the first 16 bytes, then at 64 KB: once they decide, the rest is never
    # read nor copied (Uvicorn drops what the client still sends once the answer is out).
    checks = [16, PREFIX_CHECK_BYTES] if limits is not None else []
    async for chunk in _limited(request, limit):
        body.extend(chunk)
        if checks and len(body) >= checks[0]:
            assert limits is not None
            refuse_prefix(bytes(body[:PREFIX_CHECK_BYTES]), limits)
            checks = [c for c in checks if c > len(body)]
    return bytes(body)


async def read_image(
    request: Request,
    limit: int,
    timeout_s: float | None = None,
    limits: ImageLimits | None = None,
) -> bytes:
    """The image bytes of a raw or multipart body, never reading past ``limit`` bytes.

    The headers are judged before any byte of the body is read (Content-Type, then
    Content-Length); the whole read must end within ``timeout_s`` (408 otherwise). With
    ``limits``, a raw body is also judged by its first bytes as they arrive
    (:func:`refuse_prefix`): junk and header bombs are answered without reading the rest.
    """
    content_type = request.headers.get("content-type", "").lower()
    multipart = content_type.startswith("multipart/form-data")
    if content_type and not multipart and not content_type.startswith(_RAW_TYPES):
        raise UnsupportedImage(
            f"Content-Type {echo(content_type)} is not an image; send image/* bytes or "
            "multipart/form-data with an 'image' field"
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedRequest(f"Content-Length {echo(declared)} is not a byte count")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    try:
        return await asyncio.wait_for(_read_body(request, limit, multipart, limits), timeout_s)
    except ClientDisconnect as e:  # nobody reads the answer; not a server error to log
        raise MalformedRequest(
            "the client disconnected before the whole body arrived", code="client_disconnected"
        ) from e
    except TimeoutError as e:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s", code="body_timeout"
        ) from e


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, as the JSON envelope with its status."""

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
            {"error": {"code": code, "message": str(error.detail)}},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, error: Exception) -> JSONResponse:
        return error_response(as_client_error(error))


def register(app: FastAPI, service: SegmentationService) -> None:
    """``/v1`` segmentation and models, ``/healthz``, ``/readyz``."""

    @app.post("/v1/segment", response_model=None, openapi_extra=SEGMENT_BODY_DOC)
    async def segment(
        request: Request,
        model: str | None = None,
        budget_ms: str | None = None,
        outputs: str | None = None,
        mask_size: str | None = None,
        strict: str | None = None,
        min_area: str | None = None,
        simplify: str | None = None,
        max_classes: str | None = None,
        alpha: str | None = None,
        overlay_format: str | None = None,
        legend: str | None = None,
    ) -> Response:
        options: SegmentOptions = parse_options(
            model,
            budget_ms,
            outputs,
            mask_size,
            strict,
            min_area=min_area,
            simplify=simplify,
            max_classes=max_classes,
            alpha=alpha,
            overlay_format=overlay_format,
            legend=legend,
        )
        wants_png = _accepts_png_only(request.headers.get("accept", ""))
        # Accept: image/png with outputs=overlay: the overlay picture is the body (as a
        # PNG, whatever the configured format), so it is the only output made.
        wants_overlay = wants_png and "overlay" in options.outputs
        if wants_overlay:
            if options.draw.overlay_format not in (None, "png"):
                raise InvalidParameter(
                    f"overlay_format={options.draw.overlay_format} contradicts Accept: image/png"
                )
            options = replace(
                options,
                outputs=frozenset({"overlay"}),
                draw=replace(options.draw, overlay_format="png"),
            )
        elif wants_png:
            options = replace(options, outputs=options.outputs | {"mask"})
        limits = service.config.limits
        with service.admit(options.model, options) as ticket:  # a full model: 503, body unread
            data = await read_image(
                request, limits.max_request_bytes, limits.body_timeout_s, service.limits
            )
            result = await service.segment(data, options, ticket)
        if wants_png:
            if wants_overlay:
                assert result.overlay is not None
                body, size = result.overlay.data, (result.overlay.width, result.overlay.height)
            else:
                assert result.mask_png is not None
                body, size = result.mask_png, result.mask_size
            return Response(
                body,
                media_type="image/png",
                headers={
                    "X-Segserve-Model": result.model,
                    "X-Segserve-Weights": result.weights,
                    "X-Segserve-Batch-Size": str(result.batch_size),
                    "X-Segserve-Total-Ms": f"{result.timings.total:.1f}",
                    "X-Segserve-Chosen-By": result.budget.chosen_by,
                    "X-Segserve-Size": f"{size[0]}x{size[1]}",
                    "X-Segserve-Original-Size": f"{result.width}x{result.height}",
                },
            )
        return JSONResponse(result.to_json())

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "default": service.default_model,
            "models": await service.describe_all(),
            "gateway": {"peak_rss_mb": round(peak_rss_mb(), 1)},
        }

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        return await service.describe(name)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> Response:
        failing = await service.not_ready()
        if failing:
            return error_response(NotReady(f"models not ready: {', '.join(failing)}"))
        return JSONResponse({"status": "ready", "models": sorted(service.models)})


def build_app(
    service: SegmentationService, protocols: Sequence[Registration] = (register,)
) -> FastAPI:
    """The gateway's HTTP app: error envelopes, then each protocol's routes."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:  # the background model-status refresh lives in this app's loop
            await service.status.aclose()

    app = FastAPI(
        lifespan=lifespan,
        title="segserve",
        version="1",
        description="Semantic segmentation on Ray Serve: POST an image, get a label map.",
    )
    install_error_handlers(app)
    install_api_keys(app, ApiKeys(service.api_keys))
    for protocol in protocols:
        protocol(app, service)
    return app


#: Routes open without a key: liveness must answer whatever the auth setup.
OPEN_PATHS = frozenset({"/healthz"})


def install_api_keys(app: FastAPI, keys: ApiKeys) -> None:
    """With keys configured, every route but :data:`OPEN_PATHS` needs one (401 otherwise):
    ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Checked before the body is
    read."""
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys)


class ApiKeyMiddleware:
    """Plain ASGI (no request wrapper): a request without a valid key is answered 401
    from its headers alone."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
            if root and path.startswith(root):
                path = path[len(root) :] or "/"
            if path not in OPEN_PATHS:
                headers = Headers(scope=scope)
                presented = self.keys.from_headers(
                    headers.get("authorization"), headers.get("x-api-key")
                )
                try:
                    self.keys.check(presented)
                except SegServeError as e:
                    await error_response(e)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
