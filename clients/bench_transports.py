"""The protocols ``segserve bench`` speaks: one small class each, behind :data:`TRANSPORTS`.

Each class sends one :class:`~clients.bench.Request` and returns a
:class:`~clients.bench.Sample` (never raises for a failed request: a failure is a
sample with its error code). Adding a protocol (the Open Inference v2 routes, when
the gateway serves them) is one more class with ``name``, ``segment`` and
``close``, and one more entry in :data:`TRANSPORTS`; the ``--protocol`` flag lists
the entries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from clients.bench import Request, Sample


@dataclass(frozen=True)
class Target:
    """Where and how to send: shared by every transport."""

    url: str = "http://localhost:8000"
    grpc_target: str = "localhost:9000"
    model: str | None = None
    strict: bool = False
    outputs: tuple[str, ...] = ()
    mask_size: str | None = None
    timeout_s: float = 120.0
    #: Sent as ``Authorization: Bearer <key>`` when the deployment has API keys.
    api_key: str | None = None
    #: Connections the HTTP client may open (at least the concurrency).
    max_connections: int = 256
    extra_headers: dict[str, str] = field(default_factory=dict)


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class HttpTransport:
    """``POST /v1/segment`` with the image as the raw body (httpx, HTTP/1.1 keep-alive)."""

    name = "http"

    def __init__(self, target: Target) -> None:
        self.target = target
        headers = {"Content-Type": "application/octet-stream", **target.extra_headers}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        limits = httpx.Limits(
            max_connections=target.max_connections,
            max_keepalive_connections=target.max_connections,
        )
        self._http = httpx.AsyncClient(
            base_url=target.url.rstrip("/"),
            timeout=target.timeout_s,
            headers=headers,
            limits=limits,
        )

    def _params(self, budget_ms: float | None) -> dict[str, str]:
        t = self.target
        params = {"model": t.model or "auto"}
        if budget_ms is not None:
            params["budget_ms"] = f"{budget_ms:g}"
            if t.strict:
                params["strict"] = "true"
        if t.outputs:
            params["outputs"] = ",".join(t.outputs)
        if t.mask_size:
            params["mask_size"] = t.mask_size
        return params

    async def segment(self, request: Request) -> Sample:
        started = time.perf_counter()
        budget = request.budget_ms
        try:
            response = await self._http.post(
                "/v1/segment", content=request.image, params=self._params(budget)
            )
        except httpx.TimeoutException:
            return Sample(False, "timeout", _elapsed_ms(started), budget)
        except httpx.HTTPError:
            return Sample(False, "unreachable", _elapsed_ms(started), budget)
        latency = _elapsed_ms(started)
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200:
            error = body.get("error")
            code = str(error.get("code") if isinstance(error, dict) else "")
            code = code or f"http_{response.status_code}"
            return Sample(False, code, latency, budget)
        return Sample(
            True,
            "",
            latency,
            budget,
            model=str(body.get("model", "")),
            chosen_by=str((body.get("budget") or {}).get("chosen_by", "")),
            timings={k: float(v) for k, v in (body.get("timings_ms") or {}).items()},
        )

    async def close(self) -> None:
        await self._http.aclose()


class GrpcTransport:
    """``segserve.v1.Segmentation/Segment`` over grpc.aio (one channel, multiplexed)."""

    name = "grpc"

    def __init__(self, target: Target) -> None:
        import grpc.aio

        from clients.grpc_client import CHANNEL_OPTIONS
        from deployments.protocols import segserve_pb2_grpc as pb_grpc

        self.target = target
        self._channel = grpc.aio.insecure_channel(target.grpc_target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.SegmentationStub(self._channel)
        self._metadata: list[tuple[str, str]] = [
            (k.lower(), v) for k, v in target.extra_headers.items()
        ]
        if target.api_key:
            self._metadata.append(("authorization", f"Bearer {target.api_key}"))

    async def segment(self, request: Request) -> Sample:
        import grpc

        from deployments.protocols import segserve_pb2 as pb
        from deployments.protocols.wire import BUDGET_METADATA_KEY, ERROR_CODE_METADATA_KEY

        t = self.target
        message = pb.SegmentRequest(
            image=request.image,
            model=t.model or "",
            mask_size=t.mask_size or "",
            outputs=list(t.outputs),
        )
        metadata = list(self._metadata)
        budget = request.budget_ms
        if budget is not None:
            message.budget_ms = budget
            message.strict = t.strict
            metadata.append((BUDGET_METADATA_KEY, f"{budget:g}"))
        started = time.perf_counter()
        try:
            response = await self._stub.Segment(message, timeout=t.timeout_s, metadata=metadata)
        except grpc.RpcError as e:
            latency = _elapsed_ms(started)
            status = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            pairs: Any = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
            trailing = {str(k): str(v) for k, v in (pairs or ())}
            code = trailing.get(ERROR_CODE_METADATA_KEY) or status.name.lower()
            if status == grpc.StatusCode.UNAVAILABLE and not trailing:
                code = "unreachable"
            return Sample(False, code, latency, budget)
        latency = _elapsed_ms(started)
        timing = response.timings
        return Sample(
            True,
            "",
            latency,
            budget,
            model=response.model,
            chosen_by=response.budget.chosen_by,
            timings={
                "decode": timing.decode_ms,
                "queue": timing.queue_ms,
                "inference": timing.inference_ms,
                "encode": timing.encode_ms,
                "total": timing.total_ms,
            },
        )

    async def close(self) -> None:
        await self._channel.close(None)


#: ``--protocol`` names -> transport classes. A v2 (Open Inference) transport is one
#: more class here, e.g. ``"v2-http": OipHttpTransport`` posting to
#: ``/v2/models/{model}/infer``.
TRANSPORTS: dict[str, Callable[[Target], Any]] = {
    "http": HttpTransport,
    "grpc": GrpcTransport,
}
