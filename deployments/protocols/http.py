"""The native HTTP API (``/v1``, health and readiness) over the segmentation service.

Only what is HTTP-specific happens here: reading the body within the byte limit,
multipart forms, query parameters, content negotiation, and error envelopes
(``{"error": {"code", "message"}}`` with the status of the error's kind).
:func:`build_app` makes the FastAPI app the gateway serves; tests run the same
app in-process over local model endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from deployments.pipeline.errors import (
    InvalidParameter,
    MalformedRequest,
    NotReady,
    PayloadTooLarge,
    SegServeError,
    UnsupportedImage,
)
from deployments.pipeline.options import SegmentOptions, parse_options
from deployments.pipeline.process import peak_rss_mb
from deployments.pipeline.service import SegmentationService
from deployments.protocols.common import as_client_error

logger = logging.getLogger("ray.serve")

_RAW_TYPES = ("image/", "application/octet-stream")
#: Another protocol's routes on the same app: ``register(app, service)``.
Registration = Callable[[FastAPI, SegmentationService], None]


def error_response(error: SegServeError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.kind.http_status == 503 else None
    return JSONResponse(error.to_dict(), status_code=error.kind.http_status, headers=headers)


def _accepts_png_only(accept: str) -> bool:
    """Accept asks for image/png and not for JSON."""
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]
    return "image/png" in kinds and "application/json" not in kinds


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


async def read_image(request: Request, limit: int) -> bytes:
    """The image bytes of a raw or multipart body, never reading past ``limit`` bytes."""
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
            f"Content-Type {content_type[:64]!r} is not an image; send image/* bytes or "
            "multipart/form-data with an 'image' field"
        )
    return bytes(body)


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

    @app.post("/v1/segment", response_model=None)
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
        data = await read_image(request, service.config.limits.max_request_bytes)
        result = await service.segment(data, options)
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
    app = FastAPI(
        title="segserve",
        version="1",
        description="Semantic segmentation on Ray Serve: POST an image, get a label map.",
    )
    install_error_handlers(app)
    for protocol in protocols:
        protocol(app, service)
    return app
