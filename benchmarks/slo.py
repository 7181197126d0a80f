"""SLO attainment under open-loop load: budget routing beside static routing, two settings.

Serves the shipped config's default model and its most accurate same-label model
(SegFormer b0 and b2) in two settings, one after the other in one run:

- ``shared``: the laptop config as shipped (``serve_config.yaml``): both models on
  the same cores (``shared_compute: true``, two torch threads each);
- ``isolated``: the setting routing is for, each model on its own compute: the fast
  model's replica pinned to CPU 0 and the accurate one's to CPU 1
  (``cpu_affinity``, one torch thread each, ``shared_compute: false``); the gateway,
  Ray's proxy and this load generator float over both.

In each setting it measures the fast model's capacity (requests/s it serves one
at a time: the budgets below leave no time to wait for batches; the batched
closed-loop rate is reported beside it), then offers Poisson arrivals at 50 %,
80 % and 120 % of it under three policies, on the same arrivals and budgets:

- ``auto``: ``model=auto&budget_ms=...`` (the latency-budget router);
- ``always_fastest``: the fast model named, same budgets;
- ``always_accurate``: the accurate model named, same budgets.

The budget mix (each a third of the requests), relative to the single-request
latencies measured in the same setting, one budget per branch of the policy:

- tight, 3x the fast model's: only the fast model can meet it, with a request or
  two queued ahead (an interactive client);
- medium, 1.5x the accurate model's: the accurate model fits only when it is
  nearly idle, so the router must watch its queue;
- loose, 3x the accurate model's: the accurate model fits with about a request
  ahead (a batch-like client that still wants an answer in seconds).

Per cell: requests, SLO attainment (answered 200 within the budget, measured at
the client) with its 95 % Wilson interval, goodput, each model's share, mean
quality of the answers (the configured mIoU of the model that answered),
latency percentiles. ``goal`` checks the criteria of issue 17 (isolated setting;
the shared one is reported beside). Prints JSON; progress goes to stderr. The
load is ``segserve bench``'s (clients/bench.py).

    python -m benchmarks.slo [--duration 30] [--quick] [--loads 0.5,0.8,1.2]
                             [--settings shared,isolated] [--record samples.json]

A full run takes about 18 minutes on two cores (``--quick``: about 6).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from typing import Any

import httpx

from benchmarks.common import default_model, local_serve, shipped_args
from benchmarks.jsonout import json_stdout
from clients.bench import NO_BUDGET, BudgetMix, Sample, Workload, run_closed, run_open
from clients.bench import summarize as bench_summary
from clients.bench_transports import HttpTransport, Target
from deployments.config import AppArgs, parse_args
from tests.images import encode, scene

POLICIES = ("auto", "always_fastest", "always_accurate")
SETTINGS = ("shared", "isolated")
#: (name, multiple of which model's single-request latency, share): see the module.
BUDGET_MIX = (("tight", "fast", 3.0, 1 / 3), ("medium", "accurate", 1.5, 1 / 3),
              ("loose", "accurate", 3.0, 1 / 3))  # fmt: skip


def slo_args(args: AppArgs, setting: str) -> tuple[AppArgs, str, str, dict[str, float]]:
    """The default model and the most accurate model with its labels, in ``setting``."""
    fast = default_model(args)
    same_task = [m for m in args.models if m.framework == fast.framework and m.quality]
    accurate = max(same_task, key=lambda m: m.quality or 0.0)
    if accurate.name == fast.name:
        raise SystemExit("serve_config.yaml has no more accurate model beside the default")
    document = args.model_dump()
    models = [m.model_dump() for m in (fast, accurate)]
    if setting == "isolated":
        if (os.cpu_count() or 1) < 2:
            raise SystemExit("the isolated setting needs two CPUs (one per model)")
        for cpu, model in enumerate(models):
            model.update(cpu_affinity=[cpu], cpu_threads=1)
        document["gateway"]["routing"]["shared_compute"] = False
    document["models"] = models
    document["gateway"]["default_model"] = fast.name
    quality = {fast.name: fast.quality or 0.0, accurate.name: accurate.quality or 0.0}
    return parse_args(document), fast.name, accurate.name, quality


def wilson(successes: int, total: int, z: float = 1.96) -> list[float]:
    """The 95 % Wilson score interval of a proportion."""
    if total == 0:
        return [0.0, 1.0]
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def transport(url: str, model: str, outputs: tuple[str, ...] = ()) -> HttpTransport:
    return HttpTransport(Target(url=url, model=model, outputs=outputs, timeout_s=600))


async def closed(url: str, image: bytes, model: str, total: int, concurrency: int):
    sender = transport(url, model)
    try:
        return await run_closed(sender, Workload([image], NO_BUDGET), concurrency, requests=total)
    finally:
        await sender.close()


async def open_loop(url, image, rate, duration, mix, model, seed):
    sender = transport(url, model, outputs=("classes",))
    try:
        return await run_open(
            sender, Workload([image], mix, seed=seed), rate, duration=duration, seed=seed
        )
    finally:
        await sender.close()


def summarize(samples: list[Sample], elapsed: float, quality: dict[str, float]) -> dict[str, Any]:
    level = bench_summary(samples, elapsed, {})
    answered = [s for s in samples if s.ok]
    met = sum(1 for s in samples if s.within_budget)
    mean_quality = (
        sum(quality[s.model] for s in answered) / len(answered) if answered else float("nan")
    )
    return {
        "requests": len(samples),
        "met": met,
        "slo_attainment": round(met / max(1, len(samples)), 4),
        "attainment_ci95": wilson(met, len(samples)),
        "goodput_rps": round(level["goodput_rps"], 3),
        "answered": level["ok"],
        "model_share": {name: round(level["model_share"].get(name, 0.0), 3) for name in quality},
        "mean_quality": round(mean_quality, 2),
        "attainment_by_budget": level["attainment_by_budget"],
        "chosen_by_share": level["chosen_by_share"],
        "errors": level["errors"],
        "latency_ms": level["latency_ms"],
    }


def progress(message: str) -> None:
    print(f"[slo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_setting(setting: str, options: argparse.Namespace) -> dict[str, Any]:
    args, fast, accurate, quality = slo_args(shipped_args(), setting)
    image = encode(scene(640, 480, seed=1), "JPEG", quality=90)
    loads = [float(x) for x in options.loads.split(",")]
    result: dict[str, Any] = {"models": quality, "runs": []}
    recorded: dict[str, list[float]] = {fast: [], accurate: []}
    progress(f"{setting}: starting Ray Serve")
    with local_serve(args) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            devices = {
                m["name"]: m.get("device") for m in client.get("/v1/models").json()["models"]
            }
        single = {}
        for name in (fast, accurate):
            samples, _ = asyncio.run(closed(url, image, name, options.singles + 1, 1))
            if not all(s.ok for s in samples):
                raise SystemExit(f"model {name} failed: {[s.code for s in samples]}")
            warm = sorted(s.latency_ms for s in samples[1:])
            single[name] = warm[len(warm) // 2]  # median of the warm ones
        capacity = 1000.0 / single[fast]
        batched, elapsed = asyncio.run(closed(url, image, fast, 12, 6))
        relative = {"fast": single[fast], "accurate": single[accurate]}
        budgets = {
            label: round(times * relative[which], 1) for label, which, times, _ in BUDGET_MIX
        }
        mix = BudgetMix(tuple(budgets.values()), tuple(share for *_, share in BUDGET_MIX))
        result.update(
            {
                "devices": devices,
                "single_request_ms": {k: round(v, 1) for k, v in single.items()},
                "capacity_rps": round(capacity, 3),
                "batched_closed_loop_rps": round(len(batched) / elapsed, 3),
                "budgets_ms": budgets,
                "budget_shares": {label: round(share, 3) for label, *_, share in BUDGET_MIX},
            }
        )
        progress(f"{setting}: single {result['single_request_ms']}, budgets {budgets}")
        model_for = {"auto": "auto", "always_fastest": fast, "always_accurate": accurate}
        for index, load in enumerate(loads):
            # Rotated per load, so drift over the run does not favour one policy.
            order = POLICIES[index % 3 :] + POLICIES[: index % 3]
            for policy in order:
                rows, elapsed = asyncio.run(
                    open_loop(url, image, load * capacity, options.duration, mix,
                              model_for[policy], options.seed)
                )  # fmt: skip
                cell = {"load": load, "policy": policy, **summarize(rows, elapsed, quality)}
                result["runs"].append(cell)
                for sample in rows:
                    if sample.ok and "inference" in sample.timings:
                        recorded[sample.model].append(sample.timings["inference"])
                progress(
                    f"{setting} load {load} {policy}: {cell['slo_attainment']} of "
                    f"{cell['requests']}, quality {cell['mean_quality']}"
                )
                time.sleep(2)  # let queues drain between runs
        with httpx.Client(base_url=url, timeout=60) as client:
            described = client.get("/v1/models").json()["models"]
        result["routing_estimates"] = {m["name"]: m.get("routing") for m in described}
    result["model_time_ms"] = {
        name: _percentiles(values) for name, values in recorded.items() if values
    }
    result["goal"] = criteria(result["runs"], loads)
    if options.record:
        result["_recorded"] = recorded
    return result


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"count": len(ordered), "p10": pick(0.1), "p50": pick(0.5), "p90": pick(0.9),
            "p99": pick(0.99)}  # fmt: skip


def criteria(runs: list[dict[str, Any]], loads: list[float]) -> dict[str, Any]:
    """Issue 17's criteria on one setting's cells, each with its figures and pass/fail."""
    cell = {(r["load"], r["policy"]): r for r in runs}
    checks = []

    def check(name: str, value: float, other: float, passed: bool) -> None:
        checks.append({"criterion": name, "auto": value, "other": other, "pass": passed})

    for load in loads:
        auto, fastest = cell[(load, "auto")], cell[(load, "always_fastest")]
        accurate = cell[(load, "always_accurate")]
        if load <= 0.8:
            check(
                f"attainment >= always_fastest at {load}",
                auto["slo_attainment"],
                fastest["slo_attainment"],
                auto["slo_attainment"] >= fastest["slo_attainment"],
            )
            check(
                f"mean quality > always_fastest at {load}",
                auto["mean_quality"],
                fastest["mean_quality"],
                auto["mean_quality"] > fastest["mean_quality"],
            )
        check(
            f"attainment > always_accurate at {load}",
            auto["slo_attainment"],
            accurate["slo_attainment"],
            auto["slo_attainment"] > accurate["slo_attainment"],
        )
    if 0.8 in loads:
        auto = cell[(0.8, "auto")]
        check(
            "attainment >= 0.99 at 0.8 (goal)",
            auto["slo_attainment"],
            0.99,
            auto["slo_attainment"] >= 0.99,
        )
    return {"checks": checks, "pass": all(c["pass"] for c in checks)}  # fmt: skip


def main() -> None:
    with json_stdout() as emit:
        emit(run())


def run() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per cell")
    parser.add_argument("--quick", action="store_true", help="12 s cells, fewer warm-ups")
    parser.add_argument("--loads", default="0.5,0.8,1.2", help="fractions of capacity")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="shared,isolated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", help="also write each model's batch times (ms) here")
    options = parser.parse_args()
    options.singles = 3 if options.quick else 4
    if options.quick:
        options.duration = min(options.duration, 12.0)
    started = time.time()
    results: dict[str, Any] = {
        "benchmark": "slo",
        "duration_s": options.duration,
        "budget_mix": [
            {"budget": label, "times_single_ms_of": which, "factor": times, "share": round(s, 3)}
            for label, which, times, s in BUDGET_MIX
        ],
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
        "settings": {},
    }
    for setting in options.settings.split(","):
        results["settings"][setting] = run_setting(setting, options)
    recorded = {s: r.pop("_recorded") for s, r in results["settings"].items() if "_recorded" in r}
    if options.record:
        with open(options.record, "w") as out:
            json.dump(recorded, out)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["wall_s"] = round(time.time() - started, 1)
    # Issue 17's criteria are for the isolated setting; the shared one is reported beside.
    results["goal"] = {
        setting: {
            "required": setting == "isolated",
            "pass": result["goal"]["pass"],
            "failed": [c["criterion"] for c in result["goal"]["checks"] if not c["pass"]],
        }
        for setting, result in results["settings"].items()
    }
    return results


if __name__ == "__main__":
    main()
