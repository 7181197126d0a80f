"""The latency-budget router: the most accurate model that will answer in time.

:class:`Router` is the gateway's running view of every model (latency fits fed by
the batches replicas report, work in flight, how busy shared compute is) and
turns it into predicted completion times; :func:`choose` and :func:`explicit`
(:mod:`deployments.pipeline.policy`) are the pure policy over those predictions.

A prediction is the gateway's decode and encode (fitted against the photo's
pixels), then the model's round trip: the replica's timeline
(:mod:`deployments.pipeline.queueing`: the batch running now and how far along it
is, the requests queued and those still decoding here, the batch this one will
join) plus the transport, scaled by the model's
:class:`~deployments.pipeline.latency.Calibration` (a high quantile of how late
earlier round trips came back against their predictions). A model is a
candidate only when the request would not make one already routed there miss a
budget it was predicted to meet. A model whose admission capacity is full
(:mod:`.admission`) is not a candidate for a budget while another one has room.

Ray-free: it sees model cards, the configuration and predictions, never a handle.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterator, Mapping, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from deployments.config import ModelConfig, RoutingConfig
from deployments.contract import LatencySample, ModelCard, Prediction
from deployments.pipeline.errors import DeadlineExceeded
from deployments.pipeline.latency import Calibration, LinearLatency
from deployments.pipeline.policy import Candidate, RouteChoice, choose, explicit
from deployments.pipeline.queueing import Pending, Timeline, drain

__all__ = ["Candidate", "RouteChoice", "Router", "choose", "explicit"]


#: Batch ids remembered to count each batch once (its requests return one by one).
_SEEN_BATCHES = 4096

#: Decode + encode in the gateway vs original pixels, before anything is measured:
#: about 20 ms plus 20 ms per megapixel on a laptop core (JPEG draft decoding).
_GATEWAY_PRIOR = (LatencySample(0, 20.0), LatencySample(10e6, 220.0))

#: The least spread (a fraction of the predicted round trip) assumed before calibration.
_MIN_SPREAD = 0.1

#: A reservation not sent within this long (or by its deadline) is forgotten: its request
#: failed before the model (a decode error, an admission refusal, a client gone). A decode
#: slower than this only stops counting in the queue until it is sent.
_RESERVATION_S = 10.0


@dataclass
class _ModelState:
    """The gateway's running view of one model: latency fits and work in flight."""

    config: ModelConfig
    card: ModelCard
    service: LinearLatency  # batch time vs batch input pixels (replica-measured)
    overhead: LinearLatency  # round trip minus the replica's queue and inference times
    calibration: Calibration  # actual / predicted round trips
    #: Requests routed here and not answered: sent, or reserved while they decode.
    pending: list[Pending] = field(default_factory=list)
    #: When a request to this model last came back (its batch had ended).
    last_done_at: float | None = None
    round_trips: int = 0


@dataclass(frozen=True)
class _Forecast:
    total_ms: float
    harms: bool
    entry: Pending


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
            settings = self.settings
            state = _ModelState(
                config=self.models[card.name],
                card=card,
                # Warm-up batches run while replicas start: they seed, real batches decide.
                service=LinearLatency(settings.half_life, card.warmup, prior_weight=0.1),
                overhead=LinearLatency(settings.half_life),
                calibration=Calibration(
                    settings.calibration_window,
                    settings.margin_quantile,
                    settings.calibration_min_samples,
                    settings.calibration_max_age_s,
                ),
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

    def _timeline(self, state: _ModelState, now: float, extra: Pending | None = None) -> Timeline:
        pending = state.pending if extra is None else [*state.pending, extra]
        return drain(
            state.service, pending, now, state.last_done_at, state.config.batching,
            self.replicas(state.card.name),
        )  # fmt: skip

    def _expire(self, now: float) -> None:
        for state in self._states.values():
            if any(not p.sent and p.expires_at < now for p in state.pending):
                state.pending = [p for p in state.pending if p.sent or p.expires_at >= now]

    def _others_ms(self, name: str, now: float) -> float:
        """On shared compute: the work queued on every other model, which runs first."""
        if not self.settings.shared_compute:
            return 0.0
        return sum(
            (self._timeline(other, now).free_at - now) * 1000
            for other_name, other in self._states.items()
            if other_name != name
        )

    def queue_ms(self, card: ModelCard) -> float:
        """Expected wait before a new request's batch could start on this model."""
        now = self._clock()
        state = self._state(card)
        return (self._timeline(state, now).free_at - now) * 1000 + self._others_ms(card.name, now)

    def _forecast(
        self,
        card: ModelCard,
        image_size: tuple[int, int] | None,
        now: float,
        deadline: float | None = None,
    ) -> _Forecast:
        """Predicted decode + queue + service + encode for an image of this size, sent now."""
        state = self._state(card)
        width, height = image_size or card.input_spec.target_size(512, 512)
        in_w, in_h = card.input_spec.target_size(width, height)
        gateway_ms = self.gateway_cost.mean_ms(width * height)
        entry = Pending(in_w * in_h, now + gateway_ms / 1000, sent=False, deadline=deadline)
        others_ms = self._others_ms(card.name, now)
        before, after = self._timeline(state, now), self._timeline(state, now, entry)
        round_trip_ms = (
            (after.finishes[-1] - entry.ready_at) * 1000 + state.overhead.mean_ms(0) + others_ms
        )
        factor = state.calibration.factor(now)
        sigmas = self.settings.margin_sigmas
        gateway_spread = self.gateway_cost.coefficients()[2]
        if factor is not None:
            total = gateway_ms + round_trip_ms * factor + sigmas * gateway_spread
        elif not state.pending and not state.calibration.samples(now):
            # Idle, and no answer lately: probe it at its mean. Without this a warm-up timed
            # on a busy machine, or one bad spell, shuts a model out for good (never chosen,
            # it never shows it is faster than that). Once answers come in, margins apply.
            total = gateway_ms + round_trip_ms + sigmas * gateway_spread
        else:  # independent parts: their variances add (a sum of per-part margins overstates)
            parts = (self.gateway_cost, state.overhead, state.service)
            spread = math.sqrt(sum(model.coefficients()[2] ** 2 for model in parts))
            # A fit of a few batches (or of the warm-up's two, exactly on a line) knows
            # nothing of the spread yet: assume at least _MIN_SPREAD of the round trip.
            spread = max(spread, _MIN_SPREAD * round_trip_ms)
            total = gateway_ms + round_trip_ms + sigmas * spread
        harms = self._harms(state, now, before, after, others_ms)
        if self.settings.shared_compute and not harms:
            service_ms = state.service.mean_ms(entry.pixels)
            harms = any(
                self._harms(other, now, self._timeline(other, now), None, 0.0, service_ms)
                for name, other in self._states.items()
                if name != card.name
            )
        return _Forecast(total, harms, entry)

    def _harms(
        self,
        state: _ModelState,
        now: float,
        before: Timeline,
        after: Timeline | None,
        extra_ms: float,
        delay_ms: float = 0.0,
    ) -> bool:
        """Whether a request already routed to ``state``'s model that is predicted to meet
        its deadline ``before`` would miss it ``after`` (or ``delay_ms`` later)."""
        factor = state.calibration.factor(now) or 1.0
        overhead = state.overhead.mean_ms(0) + extra_ms

        def projected(finish: float, delay: float) -> float:
            return now + ((finish - now) * 1000 + overhead + delay) * factor / 1000

        for index, request in enumerate(state.pending):
            if request.deadline is None:
                continue
            finish = before.finishes[index]
            late = projected(after.finishes[index] if after else finish, delay_ms)
            if late > request.deadline >= projected(finish, 0.0):
                return True
        return False

    def predict_ms(self, card: ModelCard, image_size: tuple[int, int] | None) -> float:
        """Predicted decode + queue + service + encode for an image of this size, now."""
        return self._forecast(card, image_size, self._clock()).total_ms

    @contextmanager
    def in_flight(self, card: ModelCard, pixels: int) -> Iterator[None]:
        """Count a request as queued on its model while it is out; learn how late it was."""
        now = self._clock()
        self._expire(now)
        state = self._state(card)
        reserved = [p for p in state.pending if not p.sent]
        entry = next((p for p in reserved if p.pixels == pixels), reserved[0] if reserved else None)
        if entry is None:  # a model named by the request: no reservation, no deadline known
            entry = Pending(pixels, now, sent=True)
            state.pending.append(entry)
        entry.sent, entry.ready_at, entry.pixels = True, now, pixels
        index = next(i for i, p in enumerate(state.pending) if p is entry)
        predicted_ms = (
            (self._timeline(state, now).finishes[index] - now) * 1000
            + state.overhead.mean_ms(0)
            + self._others_ms(card.name, now)
        )
        answered = dropped = False
        try:
            yield
            answered = True
        except DeadlineExceeded:
            dropped = True
            raise
        finally:
            done = self._clock()
            state.pending = [p for p in state.pending if p is not entry]
            state.last_done_at = done
            actual_ms = (done - now) * 1000
            # Dropped when its batch started: it would have taken at least this long, which
            # says something only when that is already later than predicted.
            if answered or (dropped and actual_ms > predicted_ms):
                state.calibration.observe(predicted_ms, actual_ms, done)

    def observe(
        self,
        card: ModelCard,
        prediction: Prediction,
        round_trip_ms: float,
        queue_estimate_ms: float,
        original_pixels: int,
        gateway_ms: float,
    ) -> None:
        """Learn from one answered request (its batch counted once, however many it held).

        ``queue_estimate_ms`` is unused: the transport overhead is the round trip less
        what the replica measured (its queue and the batch), not less a prediction."""
        state = self._state(card)
        batch = prediction.batch_id
        if batch and batch not in self._seen_batches:
            self._seen_batches[batch] = None
            if len(self._seen_batches) > _SEEN_BATCHES:
                del self._seen_batches[next(iter(self._seen_batches))]
            state.service.observe(prediction.batch_pixels, prediction.inference_ms)
            self._busy.append((self._clock(), prediction.inference_ms / 1000))
        if state.round_trips:  # the first call through a new handle also sets it up
            replica_ms = prediction.queue_ms + prediction.inference_ms
            state.overhead.observe(0, max(0.0, round_trip_ms - replica_ms))
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
        another candidate has room.

        The chosen model gets a reservation: until the request is sent (after its
        decode) it counts in that model's queue, with its deadline."""
        now = self._clock()
        self._expire(now)
        deadline = None if budget_ms is None else now + budget_ms / 1000
        candidates, entries = [], {}
        names = self.candidates(cards)
        if budget_ms is not None:
            names = [name for name in names if name not in full] or names
        for name in names:
            quality = self.models[name].quality
            forecast = self._forecast(cards[name], image_size, now, deadline)
            entries[name] = forecast.entry
            candidates.append(
                Candidate(
                    name,
                    float("-inf") if quality is None else quality,
                    forecast.total_ms,
                    forecast.harms,
                )
            )
        choice = choose(candidates, budget_ms, self.default_model, strict, self.upgrade_allowed())
        entry = entries[choice.name]
        entry.expires_at = min(now + _RESERVATION_S, math.inf if deadline is None else deadline)
        self._states[choice.name].pending.append(entry)
        return choice

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
        sent = [p for p in state.pending if p.sent]
        return {
            "service": state.service.to_dict(),
            "overhead": state.overhead.to_dict(),
            "in_flight": {"requests": len(sent), "pixels": sum(p.pixels for p in sent)},
            "reserved": len(state.pending) - len(sent),
            "queue_ms": round(self.queue_ms(state.card), 1),
            "predicted_ms_512x512": round(self.predict_ms(state.card, (512, 512)), 1),
            "calibration": state.calibration.to_dict(self._clock()),
            "margin_sigmas": self.settings.margin_sigmas,
            "shared_compute": self.settings.shared_compute,
            "utilization": round(self.utilization(), 3),
        }
