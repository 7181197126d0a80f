"""The IMAGE preprocessor contract over HTTP: a drop-in for IMAGE's segmentation container.

IMAGE's orchestrator POSTs one JSON request to ``/preprocessor`` (header
``X-Request-ID``), gives up after 15 s, validates a 200 body against its
schemas, takes 204 as "not applicable" and any other status as an error whose
body it does not read. The rules of that contract (request fields, 204 cases,
the segment rules at the original size) are :mod:`deployments.pipeline.image_contract`;
this module only reads the body, answers 204 and runs the request through the
same service as ``/v1`` (``model=auto`` with the configured budget, the same
decode, limits, routing and errors). ``GET /health`` and ``GET /warmup`` are
those of the container it replaces.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from deployments.pipeline.errors import MalformedRequest, PayloadTooLarge
from deployments.pipeline.image_contract import NotApplicable, parse_request
from deployments.pipeline.options import AUTO_MODEL, IMAGE_SEGMENTS, SegmentOptions
from deployments.pipeline.service import SegmentationService

logger = logging.getLogger("ray.serve")

#: The header the orchestrator tags each request with; echoed on the answer.
REQUEST_ID_HEADER = "X-Request-ID"
#: The picture ``/warmup`` segments: small, so warming costs one short inference.
_WARMUP_SIZE = (64, 48)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, never reading past ``limit`` bytes (413 above)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def _warmup_image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", _WARMUP_SIZE, (127, 127, 127)).save(buffer, format="PNG")
    return buffer.getvalue()


def register(app: FastAPI, service: SegmentationService) -> None:
    """``POST /preprocessor``, ``GET /health``, ``GET /warmup``."""
    contract = service.config.image
    rules = contract.rules()

    @app.post("/preprocessor", response_model=None)
    async def preprocessor(request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER, "")
        echo = {REQUEST_ID_HEADER: request_id[:128]} if request_id else None
        options = SegmentOptions(
            model=AUTO_MODEL,
            budget_ms=contract.budget_ms,
            outputs=frozenset({IMAGE_SEGMENTS}),
        )
        # Routed by budget: refused before the body only when no candidate has room, else
        # admitted once routed (before decoding).
        with service.admit(options.model, options) as ticket:
            raw = await read_body(request, contract.max_body_bytes)
            try:
                body: Any = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise MalformedRequest(
                    f"the request body is not JSON: {e}", code="invalid_preprocessor_request"
                ) from e
            parsed = parse_request(body, rules=rules, max_image_bytes=service.limits.max_bytes)
            if isinstance(parsed, NotApplicable):
                logger.info("preprocessor request %s: 204, %s", request_id, parsed.reason)
                return Response(status_code=204, headers=echo)
            result = await service.segment(parsed.image, options, ticket)
        data: dict[str, Any] = {
            "segments": result.segments or [],
            "model": result.model,
            "weights": result.weights,
        }
        if result.warning:
            data["warning"] = result.warning
        return JSONResponse(
            {
                "request_uuid": parsed.request_uuid,
                "timestamp": int(time.time()),
                "name": rules.name,
                "data": data,
            },
            headers=echo,
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {
            "status": "healthy",
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }

    @app.get("/warmup")
    async def warmup() -> dict[str, Any]:
        """One inference on the default model (503 while it is not ready)."""
        result = await service.segment(
            _warmup_image(), SegmentOptions(model=AUTO_MODEL, outputs=frozenset({"classes"}))
        )
        return {"status": "warm", "model": result.model, "total_ms": result.timings.total}
