"""HTTP clients (httpx), sync and async, for ``POST /v1/segment`` and ``/v1/models``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from clients.result import DrawOptions, SegmentationResult, SegServeClientError, read_image

DEFAULT_URL = "http://localhost:8000"
#: Where the clients read an API key when none is passed.
API_KEY_ENV = "SEGSERVE_API_KEY"


def api_key_or_env(api_key: str | None) -> str | None:
    """``api_key``, else ``$SEGSERVE_API_KEY`` (None when neither is set)."""
    return api_key or os.environ.get(API_KEY_ENV) or None


def _auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key_or_env(api_key)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _params(
    model: str | None,
    budget_ms: float | None,
    outputs: list[str] | None,
    mask_size: str | None,
    strict: bool | None = None,
    draw: DrawOptions | None = None,
) -> dict[str, str]:
    params = {"model": model, "budget_ms": budget_ms, "mask_size": mask_size}
    params["strict"] = None if strict is None else str(strict).lower()
    params["outputs"] = ",".join(outputs) if outputs else None
    chosen = {key: str(value) for key, value in params.items() if value is not None}
    return chosen | (draw.params() if draw else {})


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:500]
        raise SegServeClientError(code, message, status=response.status_code)
    return response.json()


def _transport_error(error: httpx.HTTPError, url: str) -> SegServeClientError:
    if isinstance(error, httpx.TimeoutException):
        return SegServeClientError("timeout", f"no answer from {url} in time: {error}")
    return SegServeClientError("unreachable", f"cannot reach {url}: {error}")


class SegServeClient:
    """``with SegServeClient() as client: result = client.segment("photo.jpg")``"""

    def __init__(
        self, url: str = DEFAULT_URL, timeout: float = 120.0, api_key: str | None = None
    ) -> None:
        """``api_key``: sent as ``Authorization: Bearer``; by default ``$SEGSERVE_API_KEY``."""
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers=_auth_headers(api_key)
        )

    def segment(
        self,
        image: bytes | str | Path,
        model: str | None = None,
        budget_ms: float | None = None,
        outputs: list[str] | None = None,
        mask_size: str | None = None,
        strict: bool | None = None,
        draw: DrawOptions | None = None,
    ) -> SegmentationResult:
        """Segment one image; ``outputs`` from classes, mask, contours, rle, overlay."""
        try:
            response = self._http.post(
                "/v1/segment",
                content=read_image(image),
                headers={"Content-Type": "application/octet-stream"},
                params=_params(model, budget_ms, outputs, mask_size, strict, draw),
            )
        except httpx.HTTPError as e:
            raise _transport_error(e, self.url) from e
        return SegmentationResult.from_json(_check(response))

    def models(self) -> dict[str, Any]:
        try:
            body: dict[str, Any] = _check(self._http.get("/v1/models"))
        except httpx.HTTPError as e:
            raise _transport_error(e, self.url) from e
        return body

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SegServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSegServeClient:
    """``async with AsyncSegServeClient() as client: await client.segment(data)``"""

    def __init__(
        self, url: str = DEFAULT_URL, timeout: float = 120.0, api_key: str | None = None
    ) -> None:
        """``api_key``: sent as ``Authorization: Bearer``; by default ``$SEGSERVE_API_KEY``."""
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers=_auth_headers(api_key)
        )

    async def segment(
        self,
        image: bytes | str | Path,
        model: str | None = None,
        budget_ms: float | None = None,
        outputs: list[str] | None = None,
        mask_size: str | None = None,
        strict: bool | None = None,
        draw: DrawOptions | None = None,
    ) -> SegmentationResult:
        """Segment one image; ``outputs`` from classes, mask, contours, rle, overlay."""
        try:
            response = await self._http.post(
                "/v1/segment",
                content=read_image(image),
                headers={"Content-Type": "application/octet-stream"},
                params=_params(model, budget_ms, outputs, mask_size, strict, draw),
            )
        except httpx.HTTPError as e:
            raise _transport_error(e, self.url) from e
        return SegmentationResult.from_json(_check(response))

    async def models(self) -> dict[str, Any]:
        try:
            body: dict[str, Any] = _check(await self._http.get("/v1/models"))
        except httpx.HTTPError as e:
            raise _transport_error(e, self.url) from e
        return body

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSegServeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
