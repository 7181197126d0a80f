"""The Open Inference Protocol's REST routes (``/v2``) over the segmentation service.

Only what is HTTP-specific happens here: the body is read within ``max_request_bytes``
whatever its Content-Type (tritonclient sends none, KServe ``application/octet-stream``),
``Content-Encoding: gzip``/``deflate`` is undone within the same bound, responses are
compressed for ``Accept-Encoding``, and errors are the v2 form ``{"error": message,
"code": code}`` with ``Content-Type: application/json``. Decoding tensors is
:mod:`codecs`' job; what the request means is :mod:`dataplane`'s. Triton's extensions
that segserve does not implement (model repository, statistics, shared memory, trace,
logging) answer 501, so a client learns at once that they are missing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from deployments.pipeline.errors import NotReady, PayloadTooLarge, SegServeError, UnknownModel
from deployments.pipeline.service import SegmentationService
from deployments.protocols.common import as_client_error
from deployments.protocols.oip import codecs, dataplane

Handler = Callable[..., Awaitable[Response]]

#: Triton's extension paths (and KServe's generate) that segserve answers with 501.
_EXTENSION_PATHS: Final = re.compile(
    r"^/v2/("
    r"repository(/.*)?"
    r"|models/stats"
    r"|models/[^/]+(/versions/[^/]+)?/(stats|config|trace/setting|generate|generate_stream)"
    r"|systemsharedmemory(/.*)?"
    r"|cudasharedmemory(/.*)?"
    r"|trace(/.*)?"
    r"|logging"
    r")/?$"
)


class NotImplementedExtension(SegServeError):
    """A Triton extension segserve does not implement (HTTP 501 on ``/v2`` only)."""

    code = "not_implemented"


def error_response(error: SegServeError, status: int | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.kind.http_status == 503 else None
    return JSONResponse(
        codecs.error_json(error.message, error.code),
        status_code=status or dataplane.v2_status(error),
        headers=headers,
    )


def v2_errors(handler: Handler) -> Handler:
    """Answer any exception of a ``/v2`` route in the v2 error form."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except NotImplementedExtension as e:
            return error_response(e, 501)
        except Exception as e:
            return error_response(as_client_error(e))

    return wrapper


async def read_body(request: Request, limit: int) -> bytes:
    """The whole (decompressed) body, never reading or inflating past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return codecs.decompress_body(bytes(body), request.headers.get("content-encoding"), limit)


def _json(content: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status_code)


def register(app: FastAPI, service: SegmentationService) -> None:
    """The ``/v2`` routes: server and model metadata, health, readiness, infer."""

    @app.api_route("/v2/models/stats", methods=["GET", "POST"], include_in_schema=False)
    @v2_errors
    async def all_model_stats(request: Request) -> Response:
        raise NotImplementedExtension("the statistics extension is not implemented")

    @app.get("/v2", include_in_schema=False)
    @app.get("/v2/", summary="v2 server metadata")
    @v2_errors
    async def metadata() -> Response:
        return _json(dataplane.server_metadata())

    @app.get("/v2/health/live", summary="v2 liveness")
    @v2_errors
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready", summary="v2 readiness: every model answers")
    @v2_errors
    async def ready() -> Response:
        failing = await dataplane.server_ready(service)
        if failing:
            error = NotReady(f"models not ready: {', '.join(failing)}")
            response = error_response(error)
            return JSONResponse(
                {"ready": False, **codecs.error_json(error.message, error.code)},
                status_code=response.status_code,
                headers={"Retry-After": "1"},
            )
        return _json({"ready": True})

    @app.get("/v2/models/{model_name}", summary="v2 model metadata")
    @app.get("/v2/models/{model_name}/versions/{model_version}", include_in_schema=False)
    @v2_errors
    async def model_metadata(model_name: str, model_version: str | None = None) -> Response:
        return _json(await dataplane.model_metadata(service, model_name, model_version))

    @app.get("/v2/models/{model_name}/ready", summary="v2 model readiness")
    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", include_in_schema=False)
    @v2_errors
    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        if await dataplane.model_ready(service, model_name, model_version):
            return _json({"name": model_name, "ready": True})
        # The spec: 200 is true, a 4xx false; 400, as Triton answers a model not ready.
        message = f"model {model_name[:64]!r} is not ready (loading, or its replicas are down)"
        return _json(
            {"name": model_name, "ready": False, **codecs.error_json(message, "not_ready")}, 400
        )

    @app.post("/v2/models/{model_name}/infer", summary="v2 inference")
    @app.post("/v2/models/{model_name}/versions/{model_version}/infer", include_in_schema=False)
    @v2_errors
    async def infer(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        dataplane.resolve(service, model_name, model_version)  # 404 before reading the body
        with service.admit(model_name) as ticket:  # a full model: 503 before reading it
            body = await read_body(request, service.config.limits.max_request_bytes)
            decoded = codecs.decode_rest_request(body, request.headers.get(codecs.HEADER_LENGTH))
            result = await dataplane.infer(
                service, model_name, model_version, decoded, ticket=ticket
            )
        encoded = codecs.encode_rest_response(
            decoded, result.outputs, model_name=model_name, parameters=result.parameters
        )
        content, coding = codecs.compress_body(encoded.body, request.headers.get("accept-encoding"))
        headers = encoded.headers
        if coding is not None:
            headers["Content-Encoding"] = coding
        media_type = headers.pop("Content-Type")
        return Response(content, media_type=media_type, headers=headers)

    @app.api_route(
        "/v2/{rest:path}",
        methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    @v2_errors
    async def elsewhere(request: Request, rest: str) -> Response:
        if _EXTENSION_PATHS.match(request.url.path):
            raise NotImplementedExtension(
                f"{request.url.path} belongs to a Triton extension segserve does not implement; "
                f"it implements {', '.join(codecs.EXTENSIONS)}"
            )
        raise UnknownModel(
            f"no v2 endpoint {request.method} {request.url.path[:128]}", code="not_found"
        )
