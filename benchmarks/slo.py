"""SLO attainment under open-loop load: budget routing beside static routing, in one run.

Serves the shipped config's default model and its most accurate same-label model
(SegFormer b0 and b2), measures capacity (requests/s the fast model serves one at
a time: budgets near its latency leave no time to wait for a batch; the batched
closed-loop rate is reported beside it), then offers Poisson arrivals at 50 %, 80 %
and 120 % of it with a mix of budgets (3x the fast model's latency, 1.5x and 3x the
accurate one's), under three policies:

- ``auto``: ``model=auto&budget_ms=...`` (the latency-budget router);
- ``always_accurate``: the accurate model named, same budgets;
- ``always_fastest``: the fast model named, same budgets.

Reports per run: SLO attainment (answered 200 within the budget, measured at the
client), goodput (such answers per second), each model's share, and mean quality
of the answers. Prints JSON. The load is ``segserve bench``'s (clients/bench.py):
its open loop, transport and per-level summary; this script adds the capacity
measurement, the three policies and the quality comparison.

    python -m benchmarks.slo [--duration 45] [--loads 0.5,0.8,1.2]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx

from benchmarks.common import default_model, json_stdout, local_serve, shipped_args
from clients.bench import (
    NO_BUDGET,
    BudgetMix,
    Sample,
    Workload,
    run_closed,
    run_open,
)
from clients.bench import summarize as bench_summary
from clients.bench_transports import HttpTransport, Target
from deployments.config import AppArgs, parse_args
from tests.images import encode, scene

POLICIES = ("auto", "always_accurate", "always_fastest")


def slo_args(args: AppArgs) -> tuple[AppArgs, str, str, dict[str, float]]:
    """The default model and the most accurate model with its labels, alone on the machine."""
    fast = default_model(args)
    same_task = [m for m in args.models if m.framework == fast.framework and m.quality]
    accurate = max(same_task, key=lambda m: m.quality or 0.0)
    if accurate.name == fast.name:
        raise SystemExit("serve_config.yaml has no more accurate model beside the default")
    document = args.model_dump()
    document["models"] = [m.model_dump() for m in (fast, accurate)]
    document["gateway"]["default_model"] = fast.name
    quality = {fast.name: fast.quality or 0.0, accurate.name: accurate.quality or 0.0}
    return parse_args(document), fast.name, accurate.name, quality


def transport(url: str, model: str, outputs: tuple[str, ...] = ()) -> HttpTransport:
    return HttpTransport(Target(url=url, model=model, outputs=outputs, timeout_s=600))


async def one_at_a_time(url: str, image: bytes, model: str, count: int) -> list[Sample]:
    sender = transport(url, model)
    try:
        samples, _ = await run_closed(sender, Workload([image], NO_BUDGET), 1, requests=count)
    finally:
        await sender.close()
    return samples


async def closed_loop_rps(
    url: str, image: bytes, model: str, total: int, concurrency: int
) -> float:
    sender = transport(url, model)
    try:
        samples, elapsed = await run_closed(
            sender, Workload([image], NO_BUDGET), concurrency, requests=total
        )
    finally:
        await sender.close()
    return len(samples) / elapsed


async def open_loop(
    url: str,
    image: bytes,
    rate: float,
    duration: float,
    budgets: list[float],
    policy: str,
    names: tuple[str, str],
    seed: int,
) -> tuple[list[Sample], float]:
    """segserve bench's open loop: Poisson arrivals, budgets drawn evenly from ``budgets``."""
    fast, accurate = names
    model = {"auto": "auto", "always_accurate": accurate, "always_fastest": fast}[policy]
    mix = BudgetMix(tuple(budgets), tuple(1 / len(budgets) for _ in budgets))
    sender = transport(url, model, outputs=("classes",))
    try:
        return await run_open(
            sender, Workload([image], mix, seed=seed), rate, duration=duration, seed=seed
        )
    finally:
        await sender.close()


def summarize(samples: list[Sample], duration: float, quality: dict[str, float]) -> dict[str, Any]:
    level = bench_summary(samples, duration, {})
    answered = [s for s in samples if s.ok]
    mean_quality = (
        sum(quality[s.model] for s in answered) / len(answered) if answered else float("nan")
    )
    return {
        "requests": level["sent"],
        "slo_attainment": round(level["slo_attainment"], 4),
        "goodput_rps": round(level["goodput_rps"], 3),
        "answered": level["ok"],
        "model_share": {name: round(level["model_share"].get(name, 0.0), 3) for name in quality},
        "mean_quality": round(mean_quality, 2),
        "errors": level["errors"],
        "latency_ms": level["latency_ms"],
    }


def main() -> None:
    with json_stdout() as emit:
        emit(run())


def run() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=45.0, help="seconds per run")
    parser.add_argument("--loads", default="0.5,0.8,1.2", help="fractions of capacity")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    loads = [float(x) for x in options.loads.split(",")]

    args, fast, accurate, quality = slo_args(shipped_args())
    image = encode(scene(640, 480, seed=1), "JPEG", quality=90)
    results: dict[str, Any] = {"benchmark": "slo", "models": quality, "runs": []}
    with local_serve(args) as url:
        single = {}
        for name in (fast, accurate):
            samples = asyncio.run(one_at_a_time(url, image, name, 4))
            if not all(s.ok for s in samples):
                raise SystemExit(f"model {name} failed: {[s.code for s in samples]}")
            single[name] = sorted(s.latency_ms for s in samples[1:])[1]  # median of warm ones
        # Capacity: what the fast model sustains one request at a time (a budget close to
        # its latency leaves no room to wait for batches); closed-loop, batched, beside it.
        capacity = 1000.0 / single[fast]
        batched = asyncio.run(closed_loop_rps(url, image, fast, 16, 8))
        # Budgets: tight (only the fast model fits), medium, loose (the accurate one fits).
        budgets = [3.0 * single[fast], 1.5 * single[accurate], 3.0 * single[accurate]]
        results.update(
            {
                "single_request_ms": {k: round(v, 1) for k, v in single.items()},
                "capacity_rps": round(capacity, 3),
                "batched_closed_loop_rps": round(batched, 3),
                "budgets_ms": [round(b, 1) for b in budgets],
                "duration_s": options.duration,
            }
        )
        for load in loads:
            for policy in POLICIES:
                rows, _ = asyncio.run(
                    open_loop(
                        url, image, load * capacity, options.duration, budgets, policy,
                        (fast, accurate), options.seed,
                    )
                )  # fmt: skip
                summary = summarize(rows, options.duration, quality)
                results["runs"].append({"load": load, "policy": policy, **summary})
                time.sleep(2)  # let queues drain between runs
        with httpx.Client(base_url=url, timeout=60) as client:
            described = client.get("/v1/models").json()["models"]
        results["routing_estimates"] = {m["name"]: m.get("routing") for m in described}
    by_run = {(r["load"], r["policy"]): r for r in results["runs"]}
    results["goal"] = {
        f"load_{load}": {
            "auto_attainment": by_run[(load, "auto")]["slo_attainment"],
            "auto_quality_over_fastest": round(
                by_run[(load, "auto")]["mean_quality"]
                - by_run[(load, "always_fastest")]["mean_quality"],
                2,
            ),
        }
        for load in loads
    }
    return results


if __name__ == "__main__":
    main()
