"""Full-stack HTTP throughput against the bare adapter's, in one run.

First the adapter alone (in-process, no Ray, no HTTP) runs full batches of
``max_batch_size`` images at the model's input size: its images/s is the
ceiling. Then the shipped application runs on a local Ray Serve and a closed
loop of clients POSTs a 640x480 JPEG at concurrency 1, 8 and 32; each
throughput is divided by that ceiling (goal >= 0.8). Prints JSON.

    python -m benchmarks.overhead [--requests-per-client 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
import numpy as np

from benchmarks.common import default_model, json_stdout, local_serve, median, shipped_args
from tests.images import jpeg

CONCURRENCY = (1, 8, 32)
GOAL = 0.8


def bare_throughput(config: Any, threads: int, rounds: int) -> dict[str, float]:
    from deployments.adapters.device import plan_device
    from deployments.adapters.registry import adapter_class

    adapter = adapter_class(config.framework).load(config, plan_device(0, threads, threads))
    width, height = adapter.input_spec.size or (512, 512)
    batch = config.batching.max_batch_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(batch)]
    # Label maps at 640x480, as the served requests below ask for.
    sizes = [(640, 480)] * batch

    def rate(count: int) -> float:
        adapter.predict_batch(images[:count], sizes[:count])  # warm
        started = time.perf_counter()
        for _ in range(rounds):
            adapter.predict_batch(images[:count], sizes[:count])
        return count * rounds / (time.perf_counter() - started)

    return {"batched_images_per_s": rate(batch), "batch1_images_per_s": rate(1)}


async def closed_loop(url: str, data: bytes, clients: int, per_client: int) -> dict[str, Any]:
    latencies: list[float] = []
    batch_sizes: list[int] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def client() -> None:
            for _ in range(per_client):
                started = time.perf_counter()
                response = await http.post(
                    "/v1/segment", content=data, headers={"Content-Type": "image/jpeg"}
                )
                response.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
                batch_sizes.append(response.json()["batch_size"])

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "images_per_s": round(len(latencies) / elapsed, 3),
        "p50_ms": median(latencies),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "mean_batch_size": round(float(np.mean(batch_sizes)), 2),
    }


def run() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-client", type=int, default=0, help="0: auto")
    parser.add_argument("--rounds", type=int, default=3, help="bare-adapter batches timed")
    options = parser.parse_args()

    args = shipped_args()
    config = default_model(args)
    threads = config.cpu_threads or max(1, int(-(-config.num_cpus // 1)))
    bare = bare_throughput(config, threads, options.rounds)  # before Ray: no CPU sharing
    data = jpeg(640, 480)

    results = []
    with local_serve(args) as url:
        asyncio.run(closed_loop(url, data, 2, 1))  # warm
        for clients in CONCURRENCY:
            per_client = options.requests_per_client or max(2, 48 // clients)
            row = asyncio.run(closed_loop(url, data, clients, per_client))
            row["concurrency"] = clients
            row["ratio_to_bare_batched"] = round(
                row["images_per_s"] / bare["batched_images_per_s"], 3
            )
            results.append(row)
    return {
        "benchmark": "overhead",
        "model": config.name,
        "threads": threads,
        "bare": {k: round(v, 3) for k, v in bare.items()},
        "served": results,
        "goal_ratio": GOAL,
        "goal_met_at": [r["concurrency"] for r in results if r["ratio_to_bare_batched"] >= GOAL],
    }


def main() -> None:
    with json_stdout() as emit:
        emit(run())


if __name__ == "__main__":
    main()
