"""The latency-budget router: the most accurate model that will answer in time.

:class:`Router` is the gateway's running view of every model (latency fits fed by
the batches replicas report, work in flight, how busy shared compute is) and
turns it into predicted completion times. :func:`choose` and :func:`explicit`
are the pure policy over those predictions:

- No budget: the configured default model (``chosen_by="default"``).
- A budget: the highest-quality model predicted to finish within it
  (``"budget"``); ties go to the faster one.
- Nothing fits: the fastest model, reported as not meeting the budget
  (``"fastest"``), unless the request is strict, which is rejected at once with
  :class:`DeadlineExceeded` and never queued.
- An explicit ``model=<name>`` skips selection but keeps the deadline
  (``"explicit"``); strict rejects it too when it is predicted to miss.
- A model whose admission capacity is full (:mod:`.admission`) is not a candidate
  for a budget while another one has room.

Ray-free: it sees model cards, the configuration and predictions, never a handle.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from deployments.config import ModelConfig, RoutingConfig
from deployments.contract import LatencySample, ModelCard, Prediction
from deployments.pipeline.errors import DeadlineExceeded
from deployments.pipeline.latency import LinearLatency, QueueState, queue_wait_ms


@dataclass(frozen=True)
class Candidate:
    name: str
    quality: float
    predicted_ms: float


@dataclass(frozen=True)
class RouteChoice:
    name: str
    predicted_ms: float
    #: The prediction says it finishes within the budget (None without a budget).
    fits: bool | None
    #: "default" | "budget" | "fastest" | "explicit"
    chosen_by: str


def choose(
    candidates: Sequence[Candidate],
    budget_ms: float | None,
    default: str,
    strict: bool = False,
    upgrade: bool = True,
) -> RouteChoice:
    """Pick among ``candidates`` (the models ``model=auto`` may use, default included).

    ``upgrade=False`` (shared compute that is already busy) takes the fastest model
    that fits rather than the best: a slow model would delay the requests behind it.
    """
    by_name = {c.name: c for c in candidates}
    if default not in by_name and (budget_ms is None or not candidates):
        raise ValueError(f"default model {default!r} is not a candidate")
    if budget_ms is None:
        chosen = by_name[default]
        return RouteChoice(chosen.name, chosen.predicted_ms, None, "default")
    fitting = [c for c in candidates if c.predicted_ms <= budget_ms]
    if fitting:
        if upgrade:
            best = max(fitting, key=lambda c: (c.quality, -c.predicted_ms))
        else:
            best = min(fitting, key=lambda c: (c.predicted_ms, -c.quality))
        return RouteChoice(best.name, best.predicted_ms, True, "budget")
    fastest = min(candidates, key=lambda c: (c.predicted_ms, -c.quality))
    if strict:
        raise DeadlineExceeded(
            f"no model can answer within budget_ms={budget_ms:g}: the fastest, "
            f"{fastest.name!r}, is predicted to take {fastest.predicted_ms:.0f} ms "
            "(strict=true: rejected without queueing)",
            code="budget_unreachable",
        )
    return RouteChoice(fastest.name, fastest.predicted_ms, False, "fastest")


def explicit(name: str, predicted_ms: float, budget_ms: float | None, strict: bool) -> RouteChoice:
    """A model the request named: no selection, but the budget still holds."""
    if budget_ms is None:
        return RouteChoice(name, predicted_ms, None, "explicit")
    fits = predicted_ms <= budget_ms
    if strict and not fits:
        raise DeadlineExceeded(
            f"model {name!r} is predicted to take {predicted_ms:.0f} ms, over "
            f"budget_ms={budget_ms:g} (strict=true: rejected without queueing)",
            code="budget_unreachable",
        )
    return RouteChoice(name, predicted_ms, fits, "explicit")


#: Batch ids remembered to count each batch once (its requests return one by one).
_SEEN_BATCHES = 4096

#: Decode + encode in the gateway vs original pixels, before anything is measured:
#: about 20 ms plus 20 ms per megapixel on a laptop core (JPEG draft decoding).
_GATEWAY_PRIOR = (LatencySample(0, 20.0), LatencySample(10e6, 220.0))


@dataclass
class _ModelState:
    """The gateway's running view of one model: latency fits and work in flight."""

    config: ModelConfig
    card: ModelCard
    service: LinearLatency  # batch time vs batch input pixels (replica-measured)
    overhead: LinearLatency  # round trip minus inference minus the queue estimate
    queue: QueueState = field(default_factory=QueueState)
    round_trips: int = 0

    def wait_ms(self, replicas: int) -> float:
        """Time for the work in flight to this model to drain."""
        batching = self.config.batching
        return queue_wait_ms(
            self.service, self.queue, replicas, batching.max_batch_size, batching.max_batch_pixels
        )


class Router:
    """Predicts each model's completion time for a request and picks one by budget."""

    def __init__(
        self,
        settings: RoutingConfig,
        models: Mapping[str, ModelConfig],
        default_model: str,
        replicas: Callable[[str], int | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if default_model not in models:
            raise ValueError(f"default model {default_model!r} is not configured")
        self.settings = settings
        self.models = dict(models)
        self.default_model = default_model
        self._replicas = replicas
        self._clock = clock
        self._states: dict[str, _ModelState] = {}
        self.gateway_cost = LinearLatency(settings.half_life, _GATEWAY_PRIOR, 2.0)
        self._seen_batches: dict[str, None] = {}  # insertion-ordered: oldest first
        self._busy: collections.deque[tuple[float, float]] = collections.deque(maxlen=4096)

    # ------------------------------------------------------------ state

    def _state(self, card: ModelCard) -> _ModelState:
        state = self._states.get(card.name)
        if state is None:
            half_life = self.settings.half_life
            state = _ModelState(
                config=self.models[card.name],
                card=card,
                # Warm-up batches run while replicas start: they seed, real batches decide.
                service=LinearLatency(half_life, card.warmup, prior_weight=0.1),
                overhead=LinearLatency(half_life),
            )
            self._states[card.name] = state
        return state

    def replicas(self, name: str) -> int:
        running = self._replicas(name) if self._replicas else None
        config = self.models[name]
        configured = (
            config.autoscaling_config.min_replicas
            if config.autoscaling_config is not None
            else config.num_replicas
        )
        return max(1, running or configured)

    def queue_ms(self, card: ModelCard) -> float:
        """Expected wait before a new request's batch starts on this model."""
        wait = self._state(card).wait_ms(self.replicas(card.name))
        if self.settings.shared_compute:
            wait += sum(
                other.wait_ms(self.replicas(name))
                for name, other in self._states.items()
                if name != card.name
            )
        return wait

    def predict_ms(self, card: ModelCard, image_size: tuple[int, int] | None) -> float:
        """Predicted decode + queue + service + encode for an image of this size, now."""
        state = self._state(card)
        width, height = image_size or card.input_spec.target_size(512, 512)
        in_w, in_h = card.input_spec.target_size(width, height)
        parts = (
            (self.gateway_cost, width * height),
            (state.overhead, 0),
            (state.service, in_w * in_h),
        )
        mean = sum(model.mean_ms(pixels) for model, pixels in parts)
        # Independent parts: their variances add (a sum of per-part margins overstates).
        spread = math.sqrt(sum(model.coefficients()[2] ** 2 for model, _ in parts))
        return mean + self.queue_ms(card) + self.settings.margin_sigmas * spread

    @contextmanager
    def in_flight(self, card: ModelCard, pixels: int) -> Iterator[None]:
        """Count a request as queued on its model while it is out."""
        queue = self._state(card).queue
        queue.requests += 1
        queue.pixels += pixels
        try:
            yield
        finally:
            queue.requests -= 1
            queue.pixels -= pixels

    def observe(
        self,
        card: ModelCard,
        prediction: Prediction,
        round_trip_ms: float,
        queue_estimate_ms: float,
        original_pixels: int,
        gateway_ms: float,
    ) -> None:
        """Learn from one answered request (its batch counted once, however many it held)."""
        state = self._state(card)
        batch = prediction.batch_id
        if batch and batch not in self._seen_batches:
            self._seen_batches[batch] = None
            if len(self._seen_batches) > _SEEN_BATCHES:
                del self._seen_batches[next(iter(self._seen_batches))]
            state.service.observe(prediction.batch_pixels, prediction.inference_ms)
            self._busy.append((self._clock(), prediction.inference_ms / 1000))
        if state.round_trips:  # the first call through a new handle also sets it up
            state.overhead.observe(
                0, max(0.0, round_trip_ms - prediction.inference_ms - queue_estimate_ms)
            )
        state.round_trips += 1
        self.gateway_cost.observe(original_pixels, gateway_ms)

    # ------------------------------------------------------------ policy

    def candidates(self, cards: Mapping[str, ModelCard]) -> list[str]:
        """Models ``model=auto`` may pick: a quality figure and the default model's labels."""
        default = cards[self.default_model]
        return [
            name
            for name, card in cards.items()
            if name == self.default_model
            or (self.models[name].quality is not None and card.labels == default.labels)
        ]

    def choose(
        self,
        cards: Mapping[str, ModelCard],
        image_size: tuple[int, int] | None,
        budget_ms: float | None,
        strict: bool,
        full: Set[str] = frozenset(),
    ) -> RouteChoice:
        """``model=auto`` among the models that answered (``cards``), for the budget left;
        with a budget, models in ``full`` (at their admission capacity) are left out while
        another candidate has room."""
        names = self.candidates(cards)
        if budget_ms is not None:
            names = [name for name in names if name not in full] or names
        candidates = []
        for name in names:
            quality = self.models[name].quality
            candidates.append(
                Candidate(
                    name,
                    float("-inf") if quality is None else quality,
                    self.predict_ms(cards[name], image_size),
                )
            )
        return choose(candidates, budget_ms, self.default_model, strict, self.upgrade_allowed())

    def utilization(self) -> float:
        """Model seconds run per second, over the last ``utilization_window_s``."""
        window = self.settings.utilization_window_s
        since = self._clock() - window
        return sum(busy for at, busy in self._busy if at >= since) / window

    def upgrade_allowed(self) -> bool:
        if not self.settings.shared_compute:
            return True
        return self.utilization() <= self.settings.max_upgrade_utilization

    def info(self, name: str) -> dict[str, Any]:
        """The gateway's latency estimates for a model, for ``/v1/models``."""
        state = self._states.get(name)
        if state is None:
            return {"samples": 0, "note": "no request routed to this model yet"}
        return {
            "service": state.service.to_dict(),
            "overhead": state.overhead.to_dict(),
            "in_flight": {"requests": state.queue.requests, "pixels": state.queue.pixels},
            "queue_ms": round(self.queue_ms(state.card), 1),
            "predicted_ms_512x512": round(self.predict_ms(state.card, (512, 512)), 1),
            "margin_sigmas": self.settings.margin_sigmas,
            "shared_compute": self.settings.shared_compute,
            "utilization": round(self.utilization(), 3),
        }
