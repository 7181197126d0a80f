"""The "try it" page: ``GET /`` (and ``/demo``) serves a small offline web app over ``/v1``.

Plain HTML, one script and one stylesheet from the ``deployments.static`` package
(no build step, nothing from a CDN: the page works on an offline machine). The
page itself only calls the public API (``/v1/models``, ``/v1/segment``) with the
key the user pasted, so it needs nothing from the service; ``register`` takes the
service only to match every other protocol's ``register(app, service)``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

from deployments.pipeline.service import SegmentationService

#: The files the page is made of, with their media types: nothing else is served.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
#: Only this origin: no CDN, no inline script; images from the picked file and the API.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


@cache
def static_file(name: str) -> bytes:
    """One of :data:`FILES` from the installed package (read once)."""
    return resources.files("deployments.static").joinpath(name).read_bytes()


def _response(name: str) -> Response:
    return Response(
        static_file(name),
        media_type=FILES[name],
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            # Small files; a new release must show at once, not after a cache expires.
            "Cache-Control": "no-cache",
        },
    )


def register(app: FastAPI, service: SegmentationService) -> None:
    """``GET /``, ``GET /demo`` (the page) and ``GET /static/{name}`` (its files)."""

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return _response("index.html")

    @app.get("/demo", include_in_schema=False)
    async def demo_page() -> Response:
        return _response("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in FILES:
            return Response(
                b'{"error": {"code": "not_found", "message": "no such file"}}',
                status_code=404,
                media_type="application/json",
            )
        return _response(name)
