"""gRPC against HTTP: per-request overhead and throughput, small and large photos.

One local Ray Serve with both proxies; the async Python clients send the same
photo over each transport in a closed loop at concurrency 1, 8 and 32.
Overhead is the client-measured time minus the server's own ``total`` (what
the transport, proxy and (de)serialisation add), at concurrency 1. Photos:
``--small``/``--large``, default a small and the largest photo of
../shared/testdata/photos when present, else generated 640x480 and 6000x4000
JPEGs. Prints JSON.

    python -m benchmarks.transports [--requests 16]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SHARED_PHOTOS, json_stdout, local_serve_both, median, shipped_args
from clients.grpc_client import AsyncGrpcSegServeClient
from clients.http import AsyncSegServeClient
from tests.images import jpeg

CONCURRENCY = (1, 8, 32)


def default_photos() -> dict[str, bytes]:
    small, large = SHARED_PHOTOS / "0046_boris.jpg", SHARED_PHOTOS / "0052_board.jpg"
    if small.exists() and large.exists():
        return {small.name: small.read_bytes(), large.name: large.read_bytes()}
    return {"generated_640x480.jpg": jpeg(640, 480), "generated_6000x4000.jpg": jpeg(6000, 4000)}


async def closed_loop(client: Any, data: bytes, clients: int, total: int) -> dict[str, Any]:
    latencies: list[float] = []
    overheads: list[float] = []
    remaining = [total]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            result = await client.segment(data)
            elapsed = (time.perf_counter() - started) * 1000
            latencies.append(elapsed)
            overheads.append(elapsed - result.timings.total)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    return {
        "concurrency": clients,
        "requests": len(latencies),
        "images_per_s": round(len(latencies) / wall, 3),
        "p50_ms": median(latencies),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "overhead_p50_ms": median(overheads),
    }


async def measure(url: str, target: str, photos: dict[str, bytes], requests: int) -> list[dict]:
    rows = []
    async with (
        AsyncSegServeClient(url, timeout=600) as http,
        AsyncGrpcSegServeClient(target, timeout=600) as rpc,
    ):
        for name, data in photos.items():
            for transport, client in (("http", http), ("grpc", rpc)):
                await client.segment(data)  # warm
                for clients in CONCURRENCY:
                    row = await closed_loop(client, data, clients, max(requests, 2 * clients))
                    rows.append({"photo": name, "bytes": len(data), "transport": transport, **row})
    return rows


def run() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=Path)
    parser.add_argument("--large", type=Path)
    parser.add_argument("--requests", type=int, default=12, help="per run (at least 2 per client)")
    options = parser.parse_args()
    photos = default_photos()
    if options.small and options.large:
        photos = {p.name: p.read_bytes() for p in (options.small, options.large)}
    with local_serve_both(shipped_args()) as (url, target):
        rows = asyncio.run(measure(url, target, photos, options.requests))
    summary = []
    for name in photos:
        for clients in CONCURRENCY:
            pair = {
                r["transport"]: r
                for r in rows
                if r["photo"] == name and r["concurrency"] == clients
            }
            summary.append(
                {
                    "photo": name,
                    "concurrency": clients,
                    "grpc_over_http_throughput": round(
                        pair["grpc"]["images_per_s"] / pair["http"]["images_per_s"], 3
                    ),
                    "http_overhead_p50_ms": pair["http"]["overhead_p50_ms"],
                    "grpc_overhead_p50_ms": pair["grpc"]["overhead_p50_ms"],
                }
            )
    return {"benchmark": "transports", "summary": summary, "runs": rows}


def main() -> None:
    with json_stdout() as emit:
        emit(run())


if __name__ == "__main__":
    main()
