"""A discrete-event replay of the served path, for testing the router without timing.

Poisson arrivals with budgets from a mix; a gateway that routes (the real
:class:`~deployments.pipeline.routing.Router`, on the simulated clock), decodes
and sends; one replica per model that batches as the model server's
:class:`~deployments.batching.Batcher` does (requests wait in arrival order;
when the replica is free the oldest opens a batch, which takes what is waiting
and what arrives until ``batch_wait_timeout_s`` after the oldest arrived, and
starts full or on time; one batch runs at a time) and drops requests whose
deadline passed before their batch starts.
A batch's time is the sum of recorded single-image times drawn for its images,
so the router learns from the replayed batches exactly as it does from real
ones. Each model has its own compute (the isolated setting).

Deterministic for a seed: tests compare policies on the same arrivals and draws.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments.config import BatchingConfig, ModelConfig, RoutingConfig
from deployments.contract import LatencySample, ModelCard, Prediction
from deployments.pipeline.errors import DeadlineExceeded
from deployments.pipeline.imaging import InputSpec
from deployments.pipeline.routing import Router

SIDE = 512
PIXELS = SIDE * SIDE
IMAGE = (640, 480)
BATCHING = BatchingConfig(max_batch_size=4, max_batch_pixels=4 * PIXELS, batch_wait_timeout_s=0.01)


@dataclass(frozen=True)
class SimModel:
    name: str
    quality: float
    #: Recorded times (ms) of one image; a batch of n images takes n draws.
    times_ms: tuple[float, ...]
    batching: BatchingConfig = BATCHING


@dataclass
class Outcome:
    budget_ms: float
    model: str
    #: Client-side latency; None when the replica dropped it (deadline passed).
    latency_ms: float | None

    @property
    def met(self) -> bool:
        return self.latency_ms is not None and self.latency_ms <= self.budget_ms


@dataclass
class _Request:
    arrived: float
    budget_ms: float
    model: str = ""
    deadline: float = 0.0
    reached: float = 0.0
    context: Any = None


@dataclass
class _Replica:
    model: SimModel
    waiting: deque[_Request] = field(default_factory=deque)
    busy: bool = False
    #: When a wake-up to form the next batch is due (None: none is).
    wake_at: float | None = None


def simulate(
    models: Sequence[SimModel],
    policy: str,
    rate: float,
    duration_s: float,
    budgets: Sequence[tuple[float, float]],
    routing: RoutingConfig | None = None,
    seed: int = 0,
    decode_ms: float = 15.0,
    encode_ms: float = 5.0,
    transport_ms: float = 2.0,
    router_class: type[Router] = Router,
) -> list[Outcome]:
    """``policy``: "auto" (the router) or a model's name (every request sent to it)."""
    spec = InputSpec(size=(SIDE, SIDE))
    configs = {
        m.name: ModelConfig(
            name=m.name, framework="hf_segformer", source="x", quality=m.quality,
            batching=m.batching,
        )
        for m in models
    }  # fmt: skip
    cards = {
        m.name: ModelCard(
            m.name, "hf_segformer", "random", None, ["a", "b"], spec,
            (LatencySample(PIXELS, m.times_ms[0]), LatencySample(2 * PIXELS, 2 * m.times_ms[1])),
        )
        for m in models
    }  # fmt: skip
    now = 0.0
    router = router_class(routing or RoutingConfig(), configs, models[0].name, clock=lambda: now)
    draws = random.Random(seed + 1)
    arrivals = random.Random(seed)
    replicas = {m.name: _Replica(m) for m in models}
    events: list[tuple[float, int, Callable[[], None]]] = []
    sequence = itertools.count()
    outcomes: list[Outcome] = []

    def at(time: float, action: Callable[[], None]) -> None:
        heapq.heappush(events, (time, next(sequence), action))

    def arrive(request: _Request) -> None:
        if policy == "auto":
            request.model = router.choose(cards, IMAGE, request.budget_ms, strict=False).name
        else:
            request.model = policy
        at(now + decode_ms / 1000, lambda: send(request))

    def send(request: _Request) -> None:
        request.context = router.in_flight(cards[request.model], PIXELS)
        request.context.__enter__()
        left_s = request.budget_ms / 1000 - (now - request.arrived)
        request.deadline = now + transport_ms / 2000 + left_s
        at(now + transport_ms / 2000, lambda: reach(request))

    def reach(request: _Request) -> None:
        replica = replicas[request.model]
        request.reached = now
        replica.waiting.append(request)
        form(replica)

    def form(replica: _Replica) -> None:
        """Start the next batch if the replica is free and it is full or due."""
        if replica.busy or not replica.waiting:
            return
        batching = replica.model.batching
        due = replica.waiting[0].reached + batching.batch_wait_timeout_s
        if len(replica.waiting) < batching.max_batch_size and now < due:
            if replica.wake_at != due:
                replica.wake_at = due
                at(due, lambda: wake(replica, due))
            return
        count = min(len(replica.waiting), batching.max_batch_size)
        start(replica, [replica.waiting.popleft() for _ in range(count)])

    def wake(replica: _Replica, due: float) -> None:
        if replica.wake_at == due:
            replica.wake_at = None
            form(replica)

    def start(replica: _Replica, batch: list[_Request]) -> None:
        replica.wake_at = None
        began = now
        live = [r for r in batch if r.deadline >= began]
        run_ms = sum(draws.choice(replica.model.times_ms) for _ in live)
        replica.busy = True
        batch_id = f"{replica.model.name}-{next(sequence)}"

        def end() -> None:
            replica.busy = False
            for request in batch:
                ran = request in live
                prediction = Prediction(
                    labels=np.zeros((1, 1), np.uint8),
                    queue_ms=(began - request.reached) * 1000,
                    inference_ms=run_ms,
                    batch_size=len(live),
                    batch_pixels=PIXELS * len(live),
                    batch_id=batch_id,
                )
                at(now + transport_ms / 2000, functools.partial(back, request, prediction, ran))
            form(replica)

        at(now + run_ms / 1000, end)

    def back(request: _Request, prediction: Prediction, ran: bool) -> None:
        if not ran:
            error = DeadlineExceeded("deadline passed")
            request.context.__exit__(DeadlineExceeded, error, None)
            outcomes.append(Outcome(request.budget_ms, request.model, None))
            return
        request.context.__exit__(None, None, None)
        round_trip_ms = (now - (request.arrived + decode_ms / 1000)) * 1000
        router.observe(
            cards[request.model], prediction, round_trip_ms, 0.0, IMAGE[0] * IMAGE[1],
            decode_ms + encode_ms,
        )  # fmt: skip
        latency = (now - request.arrived) * 1000 + encode_ms
        outcomes.append(Outcome(request.budget_ms, request.model, latency))

    mix_budgets = [b for b, _ in budgets]
    mix_weights = [w for _, w in budgets]
    time = 0.0
    while time < duration_s:
        request = _Request(time, arrivals.choices(mix_budgets, mix_weights)[0])
        at(time, functools.partial(arrive, request))
        time += arrivals.expovariate(rate)
    while events:
        now, _, action = heapq.heappop(events)
        action()
    return outcomes


def attainment(outcomes: Sequence[Outcome]) -> float:
    return sum(o.met for o in outcomes) / max(1, len(outcomes))


def mean_quality(outcomes: Sequence[Outcome], quality: dict[str, float]) -> float:
    answered = [o for o in outcomes if o.latency_ms is not None]
    return sum(quality[o.model] for o in answered) / max(1, len(answered))
