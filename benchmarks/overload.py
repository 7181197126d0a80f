"""Overload: how fast a full model is refused, and what the requests it accepts get.

The gateway's HTTP app (service, decode pool, admission control) runs under uvicorn in a
child process over a tiny SegFormer in a process of its own (as a replica; no Ray),
with a small capacity:
``--ongoing`` x 1 replica + ``--queued``. First ``capacity`` closed-loop clients (as many
as it admits at once, so none is refused) measure what it sustains (requests/s). Then
an open-loop Poisson stream at ``--rate-factor`` (2) times that rate, for ``--overload-s``
seconds, sends 640x480 JPEGs to ``/v1/segment?model=tiny&budget_ms=B``, where the budget
B is ``--budget-factor`` (2) times the time the admitted work takes to drain (capacity
/ rate). Reported: the refusals' latency (p50/p99/max; goal p99 under 20 ms), the
accepted requests' p99 against B and how many met it, counts by status and code, and
``/healthz`` probed meanwhile (what the loaded gateway takes to answer anything).
First, what a refusal costs the gateway's code alone (the app in-process, no socket).

The same stream then goes to a baseline gateway without admission control whose model
refuses at the same capacity only once asked, after the upload was read and decoded (as
Ray's handle did with ``BackPressureError``): the ratio of the two is the figure to
compare (the machine's load changes both).

    python -m benchmarks.overload [--overload-s 20] [--measure-s 10] [--rate-factor 2]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import ModelProcess, free_port
from tests.images import jpeg

# ------------------------------------------------------------------ the gateway process


class RefusedWhenAsked:
    """What a Ray handle does at ``max_queued_requests``: 503 once the request was read,
    decoded and sent (the baseline)."""

    def __init__(self, inner: ModelProcess, capacity: int) -> None:
        self.inner = inner
        self.capacity = capacity
        self.in_flight = 0

    async def card(self) -> Any:
        return await self.inner.card()

    async def predict(self, request: Any) -> Any:
        from deployments.pipeline.errors import Overloaded

        if self.in_flight >= self.capacity:
            raise Overloaded("the model's queue is full; retry later")
        self.in_flight += 1
        try:
            return await self.inner.predict(request)
        finally:
            self.in_flight -= 1

    async def describe(self) -> dict[str, Any]:
        return await self.inner.describe()

    async def ready(self) -> bool:
        return True


def serve(port: int, mode: str, ongoing: int, queued: int, workers: int) -> None:
    """The child process: the HTTP app over a tiny SegFormer (in a process of its own) on
    ``port``; ``mode`` is ``admission`` or ``baseline``."""
    import uvicorn

    from deployments.config import AdmissionConfig, GatewayConfig, LimitsConfig, ModelConfig
    from deployments.pipeline.service import SegmentationService
    from deployments.protocols import http
    from tests.tiny_models import save_tiny_segformer

    directory = save_tiny_segformer(Path(tempfile.mkdtemp(prefix="overload-model")))
    model = ModelConfig(
        name="tiny",
        framework="hf_segformer",
        source=str(directory),
        max_ongoing_requests=ongoing,
        max_queued_requests=queued,
    )
    replica = ModelProcess(model)
    endpoint: Any = replica if mode == "admission" else RefusedWhenAsked(replica, ongoing + queued)
    gateway = GatewayConfig(
        limits=LimitsConfig(decode_workers=workers),
        admission=AdmissionConfig(enabled=mode == "admission"),
    )
    service = SegmentationService({"tiny": endpoint}, [model], gateway)
    try:
        uvicorn.run(
            http.build_app(service), host="127.0.0.1", port=port, log_level="error", backlog=2048
        )
    finally:
        replica.pool.shutdown(wait=False, cancel_futures=True)


class Gateway:
    """A child gateway process, started and waited for; terminated on exit."""

    def __init__(self, mode: str, options: argparse.Namespace) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.overload", "--serve", str(self.port),
             "--mode", mode, "--ongoing", str(options.ongoing), "--queued", str(options.queued),
             "--decode-workers", str(options.decode_workers)],
            stdout=sys.stderr,
        )  # fmt: skip

    def __enter__(self) -> Gateway:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.child.poll() is not None:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        self.child.terminate()
        self.child.wait(30)


# ------------------------------------------------------------------ the clients


Outcome = tuple[int, str, float, bool | None]  # status, error code, ms, budget met


async def one(client: httpx.AsyncClient, query: str, body: bytes) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(
            f"/v1/segment?{query}", content=body, headers={"content-type": "image/jpeg"}
        )
    except httpx.HTTPError as e:
        return 0, type(e).__name__, (time.perf_counter() - started) * 1000, None
    ms = (time.perf_counter() - started) * 1000
    try:
        document = response.json()
        if response.status_code == 200:
            return 200, "", ms, document["budget"]["met"]
        return response.status_code, str(document["error"]["code"]), ms, None
    except (ValueError, KeyError, TypeError):
        return response.status_code, "unexpected_body", ms, None


def client_for(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=300)


async def closed_loop(url: str, clients: int, seconds: float, body: bytes) -> list[Outcome]:
    outcomes: list[Outcome] = []
    async with client_for(url) as client:
        for _ in range(2):  # warm: connections, the model, the decode workers
            await one(client, "model=tiny", body)
        stop = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < stop:
                outcomes.append(await one(client, "model=tiny", body))

        await asyncio.gather(*(loop() for _ in range(clients)))
    return outcomes


async def healthz(client: httpx.AsyncClient, stop: asyncio.Event) -> list[float]:
    """GET /healthz every 50 ms: what the gateway takes to answer anything, under load."""
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        (await client.get("/healthz")).raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.05)
    return latencies


async def open_loop(
    url: str, rate: float, seconds: float, body: bytes, budget_ms: float, seed: int = 7
) -> tuple[list[Outcome], float, list[float]]:
    """Poisson arrivals at ``rate``/s for ``seconds``, each sent whatever came before;
    /healthz probed beside them."""
    rng = random.Random(seed)
    query = f"model=tiny&budget_ms={budget_ms:.0f}"
    async with client_for(url) as client:
        await one(client, "model=tiny", body)
        stop = asyncio.Event()
        prober = asyncio.create_task(healthz(client, stop))
        tasks: list[asyncio.Task[Outcome]] = []
        started = time.monotonic()
        due = started
        while due - started < seconds:
            due += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(client, query, body)))
        stop.set()
        probes = await prober
        outcomes = list(await asyncio.gather(*tasks))
        offered = len(tasks) / (time.monotonic() - started)
    return outcomes, offered, probes


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 2),
        "p99": round(float(np.percentile(array, 99)), 2),
        "max": round(float(array.max()), 2),
    }


def summary(
    outcomes: list[Outcome], budget_ms: float, offered: float, probes: list[float]
) -> dict[str, Any]:
    accepted = [o for o in outcomes if o[0] == 200]
    refused = [o for o in outcomes if o[0] == 503 and o[1] == "overloaded"]
    counts = collections.Counter(f"{o[0]} {o[1]}".strip() for o in outcomes)
    accepted_ms = percentiles([o[2] for o in accepted])
    p99 = accepted_ms["p99"]
    met = [o for o in accepted if o[3]]
    return {
        "sent": len(outcomes),
        "offered_rps": round(offered, 2),
        "answers": dict(sorted(counts.items())),
        "accepted": len(accepted),
        "refused_overloaded": len(refused),
        "refusal_ms": percentiles([o[2] for o in refused]),
        "healthz_ms_meanwhile": percentiles(probes),
        "accepted_ms": accepted_ms,
        "accepted_p99_over_budget": None if p99 is None else round(p99 / budget_ms, 3),
        "accepted_budget_met_fraction": round(len(met) / len(accepted), 3) if accepted else None,
    }


def in_process_refusals(count: int = 500) -> dict[str, float | None]:
    """What one refusal costs the gateway's code alone: the HTTP app in this process
    (httpx's ASGI transport: no socket, no other process) over a model whose one slot a
    request holds, answering ``count`` more one after another."""
    from deployments.config import GatewayConfig, ModelConfig
    from deployments.pipeline.service import SegmentationService
    from deployments.protocols import http

    class Never:
        async def card(self) -> Any:
            raise AssertionError("a refused request never asks the model")

        predict = describe = ready = card

    model = ModelConfig(
        name="tiny", framework="hf_segformer", source="-", max_ongoing_requests=1,
        max_queued_requests=0,
    )  # fmt: skip
    endpoints: dict[str, Any] = {"tiny": Never()}
    service = SegmentationService(endpoints, [model], GatewayConfig())
    body = b"\xff" * 50_000

    async def run() -> list[float]:
        transport = httpx.ASGITransport(app=http.build_app(service))
        latencies = []
        with service.admit("tiny"):  # the one slot, held
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                for _ in range(count):
                    started = time.perf_counter()
                    response = await client.post("/v1/segment?model=tiny", content=body)
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 503
        return latencies

    return percentiles(asyncio.run(run()))


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--mode", default="admission", help=argparse.SUPPRESS)
    parser.add_argument("--ongoing", type=int, default=2, help="max_ongoing_requests")
    parser.add_argument("--queued", type=int, default=4, help="max_queued_requests")
    parser.add_argument("--decode-workers", type=int, default=1)
    parser.add_argument("--measure-s", type=float, default=10.0)
    parser.add_argument("--overload-s", type=float, default=20.0)
    parser.add_argument("--rate-factor", type=float, default=2.0)
    parser.add_argument("--budget-factor", type=float, default=2.0)
    parser.add_argument("--no-baseline", action="store_true")
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.mode, options.ongoing, options.queued, options.decode_workers)
        return

    body = jpeg(640, 480)
    capacity = options.ongoing + options.queued
    began = time.monotonic()
    load = os.getloadavg()
    in_process = in_process_refusals()
    with Gateway("admission", options) as gateway:
        measured = asyncio.run(closed_loop(gateway.url, capacity, options.measure_s, body))
        served = [o for o in measured if o[0] == 200]
        rate = len(served) / options.measure_s
        drain_ms = capacity / rate * 1000
        budget_ms = options.budget_factor * drain_ms
        offered_rate = options.rate_factor * rate
        outcomes, offered, probes = asyncio.run(
            open_loop(gateway.url, offered_rate, options.overload_s, body, budget_ms)
        )
    admitted = summary(outcomes, budget_ms, offered, probes)
    result: dict[str, Any] = {
        "setup": {
            "max_ongoing_requests": options.ongoing,
            "max_queued_requests": options.queued,
            "replicas": 1,
            "capacity_in_flight": capacity,
            "decode_workers": options.decode_workers,
            "image": "640x480 JPEG",
            "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in load],
        },
        "refusal_in_process_ms": in_process,
        "capacity": {
            "closed_loop_clients": capacity,
            "seconds": options.measure_s,
            "throughput_rps": round(rate, 2),
            "latency_ms": percentiles([o[2] for o in served]),
            "refused": len(measured) - len(served),
        },
        "overload": {
            "rate_factor": options.rate_factor,
            "seconds": options.overload_s,
            "budget_ms": round(budget_ms, 1),
            "admission": admitted,
        },
    }
    if not options.no_baseline:
        with Gateway("baseline", options) as gateway:
            outcomes, offered, probes = asyncio.run(
                open_loop(gateway.url, offered_rate, options.overload_s, body, budget_ms)
            )
        baseline = summary(outcomes, budget_ms, offered, probes)
        result["overload"]["baseline_refused_after_decode"] = baseline
        ours, theirs = admitted["refusal_ms"]["p50"], baseline["refusal_ms"]["p50"]
        if ours and theirs:
            result["overload"]["refusal_p50_ratio_baseline_to_admission"] = round(theirs / ours, 1)
    p99 = admitted["refusal_ms"]["p99"]
    result["goals"] = {
        "refusal_p99_under_20ms": p99 is not None and p99 < 20.0,
        "accepted_p99_within_budget": (admitted["accepted_p99_over_budget"] or 99) <= 1.0,
    }
    result["wall_s"] = round(time.monotonic() - began, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
