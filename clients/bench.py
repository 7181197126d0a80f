"""``segserve bench``'s library: load schedules, one level's run, and what a level reports.

A *level* is one closed-loop concurrency (N workers, each sending its next
request when the last is answered) or one open-loop rate (Poisson arrivals,
sent whether or not earlier ones were answered: what a service's users do).
Every request picks an image (cycled) and a budget (from a weighted mix, by a
seeded RNG, so two runs send the same sequence), and becomes a :class:`Sample`;
:func:`summarize` turns a level's samples into its JSON record. The pure parts
(mix parsing, schedules, percentiles, aggregation) take no clock and no network.

The transports (HTTP ``/v1``, gRPC ``segserve.v1``) are in
:mod:`clients.bench_transports`; the figure in :mod:`clients.bench_plot`; the
command line in :mod:`clients.bench_cli`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

#: The percentiles each level reports, by key.
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
TIMING_PARTS = ("decode", "queue", "inference", "encode", "total")


# ---------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class BudgetMix:
    """Budgets (ms, or None for no budget) with the share of requests each gets."""

    budgets: tuple[float | None, ...]
    weights: tuple[float, ...]

    def draw(self, rng: random.Random) -> float | None:
        return rng.choices(self.budgets, weights=self.weights)[0]

    def to_json(self) -> list[dict[str, float | None]]:
        return [
            {"budget_ms": b, "share": round(w, 6)}
            for b, w in zip(self.budgets, self.weights, strict=True)
        ]


NO_BUDGET = BudgetMix((None,), (1.0,))


def parse_budget_mix(text: str | None) -> BudgetMix:
    """``"500:0.5,2000:0.5"`` (ms:share; shares are normalised), ``"800"``, ``"none:1,500:1"``."""
    if text is None or not text.strip():
        return NO_BUDGET
    budgets: list[float | None] = []
    weights: list[float] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        value, _, share = item.partition(":")
        try:
            weight = float(share) if share.strip() else 1.0
            budget = None if value.strip().lower() == "none" else float(value)
        except ValueError:
            raise ValueError(f"budget mix item {item!r} is not MS[:SHARE]") from None
        if budget is not None and (not math.isfinite(budget) or budget <= 0):
            raise ValueError(f"budget {value!r} must be a positive number of milliseconds")
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"share {share!r} of budget {value!r} must be positive")
        if budget in budgets:
            raise ValueError(f"budget {value!r} is listed twice")
        budgets.append(budget)
        weights.append(weight)
    if not budgets:
        raise ValueError(f"budget mix {text!r} names no budget")
    total = sum(weights)
    return BudgetMix(tuple(budgets), tuple(w / total for w in weights))


def parse_levels(text: str | None, kind: Callable[[str], float] = float) -> list[float]:
    """``"1,4,16"`` as numbers, each positive."""
    if not text:
        return []
    levels = [kind(x) for x in text.split(",") if x.strip()]
    if any(not math.isfinite(x) or x <= 0 for x in levels):
        raise ValueError(f"levels must be positive numbers, got {text!r}")
    return levels


# ---------------------------------------------------------------------- schedules


def poisson_schedule(
    rate: float, rng: random.Random, duration: float | None = None, count: int | None = None
) -> list[float]:
    """Arrival offsets (s from the start) of a Poisson process at ``rate`` per second,
    up to ``duration`` seconds or ``count`` arrivals (whichever is given; both: the first)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    if duration is None and count is None:
        raise ValueError("give a duration or a count")
    arrivals: list[float] = []
    at = 0.0
    while count is None or len(arrivals) < count:
        if duration is not None and at >= duration:
            break
        arrivals.append(at)
        at += rng.expovariate(rate)
    return arrivals


# ---------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """One request as the client saw it."""

    ok: bool
    #: The service's error code ("deadline_exceeded", "unreachable", ...); "" when ok.
    code: str
    latency_ms: float
    budget_ms: float | None = None
    model: str = ""
    chosen_by: str = ""
    #: The server's own split (decode, queue, inference, encode, total); empty on errors.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def within_budget(self) -> bool:
        """Answered, and within the budget measured at the client (no budget: answered)."""
        return self.ok and (self.budget_ms is None or self.latency_ms <= self.budget_ms)


@dataclass(frozen=True)
class Request:
    image: bytes
    budget_ms: float | None


class Transport(Protocol):
    """One way of sending ``segment`` requests (see :mod:`clients.bench_transports`)."""

    name: str

    async def segment(self, request: Request) -> Sample: ...

    async def close(self) -> None: ...


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/p99.9 (linear interpolation between samples); None without samples."""
    if not values:
        return dict.fromkeys(PERCENTILES)
    points = np.percentile(np.asarray(values, dtype=np.float64), list(PERCENTILES.values()))
    return {key: round(float(p), 3) for key, p in zip(PERCENTILES, points, strict=True)}


def attainment(samples: Sequence[Sample], targets_ms: Iterable[float]) -> list[float]:
    """For each latency target, the share of all requests answered within it."""
    answered = np.sort([s.latency_ms for s in samples if s.ok])
    total = max(1, len(samples))
    return [round(float(np.searchsorted(answered, t, side="right")) / total, 6) for t in targets_ms]


def attainment_curve(
    samples: Sequence[Sample], extra_targets: Iterable[float] = (), points: int = 48
) -> dict[str, list[float]]:
    """The attainment at log-spaced latency targets spanning the answers (plus the budgets)."""
    answered = [s.latency_ms for s in samples if s.ok]
    if not answered:
        return {"targets_ms": [], "attained": []}
    low, high = max(0.8 * min(answered), 0.01), 1.25 * max(answered)
    grid = {round(float(t), 3) for t in np.geomspace(low, high, points)}
    targets = sorted(grid | {float(t) for t in extra_targets})
    return {"targets_ms": targets, "attained": attainment(samples, targets)}


def _shares(values: Iterable[str], total: int) -> dict[str, float]:
    counts = Counter(values)
    return {k: round(n / max(1, total), 6) for k, n in sorted(counts.items())}


def summarize(samples: Sequence[Sample], elapsed_s: float, level: dict[str, Any]) -> dict[str, Any]:
    """One level's JSON record from its samples and its wall time."""
    ok = [s for s in samples if s.ok]
    good = [s for s in samples if s.within_budget]
    elapsed = max(elapsed_s, 1e-9)
    budgets = sorted({s.budget_ms for s in samples if s.budget_ms is not None})
    by_budget = {
        f"{b:g}": round(
            sum(1 for s in samples if s.budget_ms == b and s.within_budget)
            / max(1, sum(1 for s in samples if s.budget_ms == b)),
            6,
        )
        for b in budgets
    }
    timing: dict[str, float | None] = {}
    means: dict[str, float | None] = {}
    for part in TIMING_PARTS:
        values = [s.timings[part] for s in ok if part in s.timings]
        timing[part] = percentiles(values)["p50"]
        means[part] = round(float(np.mean(values)), 3) if values else None
    return {
        **level,
        "elapsed_s": round(elapsed, 3),
        "sent": len(samples),
        "ok": len(ok),
        "errors": dict(sorted(Counter(s.code for s in samples if not s.ok).items())),
        "throughput_rps": round(len(ok) / elapsed, 4),
        "goodput_rps": round(len(good) / elapsed, 4),
        "slo_attainment": round(len(good) / max(1, len(samples)), 6),
        "attainment_by_budget": by_budget,
        "latency_ms": percentiles([s.latency_ms for s in ok]),
        "model_counts": dict(sorted(Counter(s.model for s in ok).items())),
        "model_share": _shares((s.model for s in ok), len(ok)),
        "chosen_by_share": _shares((s.chosen_by for s in ok), len(ok)),
        "server_timings_ms": {"p50": timing, "mean": means},
        "attainment_curve": attainment_curve(samples, budgets),
    }


# ---------------------------------------------------------------------- running


class Workload:
    """The request sequence: images cycled, budgets drawn from the mix by a seeded RNG."""

    def __init__(self, images: Sequence[bytes], mix: BudgetMix, seed: int = 0) -> None:
        if not images:
            raise ValueError("no images to send")
        self.images = list(images)
        self.mix = mix
        self.rng = random.Random(seed)
        self._next = 0

    def next(self) -> Request:
        image = self.images[self._next % len(self.images)]
        self._next += 1
        return Request(image, self.mix.draw(self.rng))


#: Called after each answered request with all of the level's samples so far.
Progress = Callable[[Sequence[Sample]], None]


async def run_closed(
    transport: Transport,
    workload: Workload,
    concurrency: int,
    duration: float | None = None,
    requests: int | None = None,
    progress: Progress | None = None,
) -> tuple[list[Sample], float]:
    """``concurrency`` workers back to back for ``duration`` s or ``requests`` in all."""
    if duration is None and requests is None:
        raise ValueError("give a duration or a request count")
    samples: list[Sample] = []
    started = time.perf_counter()
    issued = 0

    def more() -> bool:
        nonlocal issued
        if requests is not None and issued >= requests:
            return False
        if duration is not None and time.perf_counter() - started >= duration:
            return False
        issued += 1
        return True

    async def worker() -> None:
        while more():
            samples.append(await transport.segment(workload.next()))
            if progress is not None:
                progress(samples)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


async def run_open(
    transport: Transport,
    workload: Workload,
    rate: float,
    duration: float | None = None,
    requests: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[list[Sample], float]:
    """Poisson arrivals at ``rate``/s; each request is sent at its time, answered or not."""
    schedule = poisson_schedule(rate, random.Random(seed), duration=duration, count=requests)
    samples: list[Sample] = []
    started = time.perf_counter()

    async def one(request: Request) -> None:
        samples.append(await transport.segment(request))
        if progress is not None:
            progress(samples)

    tasks = []
    for at in schedule:
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(workload.next())))
    await asyncio.gather(*tasks)
    return samples, time.perf_counter() - started


async def warm_up(transport: Transport, workload: Workload, count: int) -> list[Sample]:
    """``count`` requests one at a time before measuring (not in any level)."""
    return [await transport.segment(workload.next()) for _ in range(count)]
