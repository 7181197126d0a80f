"""Admission control: a full model is refused in milliseconds, not after upload and decode.

:class:`Admission` counts, per model, the requests this gateway admitted and has not
answered yet, and refuses one more (:class:`Overloaded`: 503 ``overloaded``, gRPC
RESOURCE_EXHAUSTED) once that would pass what the model's replicas hold
(``max_ongoing_requests`` x replicas + ``max_queued_requests``, scaled and shared among
gateway replicas as :class:`~deployments.config.AdmissionConfig` says).

A request holds a :class:`Ticket` from admission to answer; leaving its ``with`` block
(answer, error, cancellation, client disconnect) releases it, once. Where the check
sits:

- the model is known before the body (``model=<name>``, or ``auto`` without budget
  routing): the protocol takes the ticket before reading the body
  (:meth:`SegmentationService.admit`), or, for gRPC, before decoding the message;
- ``model=auto`` with a budget: the router needs the image's size, read from its
  header, so the ticket is taken right after routing, before the decode. Before the
  body only a request that no candidate could take is refused, and routing skips
  full models while another candidate has room.

Ray-free: the running replica counts come in as functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

from deployments.config import GatewayConfig, ModelConfig
from deployments.pipeline.errors import Overloaded
from deployments.pipeline.options import AUTO_MODEL, SegmentOptions


def overloaded_message(model: str) -> str:
    """The refusal's message, the same whether the gateway or Ray's handle refused (a
    client sees one text per model on every transport; the counts are in /v1/models)."""
    return f"model {model!r} is at capacity; retry later"


class Ticket:
    """The slots one request holds, released together, once (a context manager).

    A ticket made ``within`` another (the one a protocol took before reading the body)
    covers the models the outer one holds: the service does not count them twice.
    """

    def __init__(self, admission: Admission, within: Ticket | None = None) -> None:
        self._admission = admission
        self._within = within
        self._held: dict[str, int] = {}

    def covers(self, model: str) -> bool:
        """Whether this ticket (or the one it is within) holds a slot on ``model``."""
        return model in self._held or (self._within is not None and self._within.covers(model))

    def take(self, model: str, count: int = 1) -> None:
        """``count`` more slots on ``model``, all or none (:class:`Overloaded` if full)."""
        self._admission.acquire(model, count, alone=self._admission.in_flight(model) == 0)
        self._held[model] = self._held.get(model, 0) + count

    def take_more(self, model: str, count: int) -> None:
        """Slots for the rest of a multi-image request whose first image holds one: refused
        only when they would pass the capacity while other requests are in flight."""
        if count <= 0:
            return
        alone = self._admission.in_flight(model) <= self._held_in(model)
        self._admission.acquire(model, count, alone=alone)
        self._held[model] = self._held.get(model, 0) + count

    def _held_in(self, model: str) -> int:
        outer = self._within._held_in(model) if self._within is not None else 0
        return self._held.get(model, 0) + outer

    def ensure(self, model: str) -> None:
        """A slot on ``model`` unless one is held already (the model routing chose)."""
        if not self.covers(model):
            self.take(model)

    def release(self) -> None:
        held, self._held = self._held, {}
        for model, count in held.items():
            self._admission.release(model, count)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class Admission:
    """Per-model work in flight at this gateway against what the model's replicas hold."""

    def __init__(
        self,
        gateway: GatewayConfig,
        models: Mapping[str, ModelConfig],
        replicas: Callable[[str], int],
        gateways: Callable[[], int | None] | None = None,
    ) -> None:
        """``replicas(model)``: the model's replicas now; ``gateways()``: running gateway
        replicas (None while unknown: the configured count)."""
        self.settings = gateway.admission
        self.models = dict(models)
        self.default_model = gateway.default_model or next(iter(self.models))
        self._replicas = replicas
        self._gateways = gateways
        scaling = gateway.autoscaling_config
        self._configured_gateways = (
            gateway.num_replicas if scaling is None else max(1, scaling.min_replicas)
        )
        self._in_flight = dict.fromkeys(self.models, 0)

    def gateways(self) -> int:
        running = self._gateways() if self._gateways is not None else None
        return max(1, running or self._configured_gateways)

    # ------------------------------------------------------------ capacity

    def capacity(self, model: str) -> int | None:
        """Requests this gateway admits to ``model`` at once (None: no bound)."""
        config = self.models[model]
        if not self.settings.enabled or config.max_queued_requests < 0:
            return None
        running = config.max_ongoing_requests * self._replicas(model)
        if self.settings.share_among_gateways:
            running = math.ceil(running / self.gateways())
        scaled = self.settings.capacity_factor * (running + config.max_queued_requests)
        return max(1, math.ceil(scaled))

    def in_flight(self, model: str) -> int:
        return self._in_flight[model]

    def full(self, model: str) -> bool:
        capacity = self.capacity(model)
        return capacity is not None and self._in_flight[model] >= capacity

    def info(self, model: str) -> dict[str, int | None]:
        """For ``/v1/models``: this gateway's count and bound."""
        return {"in_flight": self._in_flight[model], "capacity": self.capacity(model)}

    # ------------------------------------------------------------ slots

    def acquire(self, model: str, count: int = 1, alone: bool = False) -> None:
        """Count ``count`` more requests on ``model``, or raise :class:`Overloaded`.

        ``alone`` (nothing else in flight on it): admitted whatever ``count``, so a
        request larger than the capacity is slow, never impossible.
        """
        capacity = self.capacity(model)
        current = self._in_flight[model]
        if capacity is not None and not alone and current + count > capacity:
            raise Overloaded(overloaded_message(model))
        self._in_flight[model] = current + count

    def release(self, model: str, count: int = 1) -> None:
        self._in_flight[model] = max(0, self._in_flight[model] - count)

    # ------------------------------------------------------------ requests

    def known_model(self, model: str, options: SegmentOptions | None) -> str | None:
        """The model a request runs on when that does not depend on its image: a name, or
        ``auto`` without budget routing (needs the options; None when unknown)."""
        if model != AUTO_MODEL:
            return model
        if options is not None and (options.budget_ms is None or options.budget_is_deadline):
            return self.default_model
        return None

    def budget_candidates(self) -> list[str]:
        """The models ``model=auto`` with a budget could pick (a superset: labels unseen)."""
        return [
            name
            for name, config in self.models.items()
            if name == self.default_model or config.quality is not None
        ]

    def check_room(self, models: Iterable[str]) -> None:
        """:class:`Overloaded` when every one of ``models`` is full."""
        names = list(models)
        if names and all(self.full(name) for name in names):
            raise Overloaded(
                f"every model this request could run on is at capacity "
                f"({', '.join(repr(n) for n in names)}); retry later"
            )

    def enter(
        self, model: str, options: SegmentOptions | None = None, within: Ticket | None = None
    ) -> Ticket:
        """A request's ticket: a slot on its model when that is known (``within`` a ticket
        already taken, nothing more), else a check that some candidate has room."""
        ticket = Ticket(self, within)
        known = self.known_model(model, options)
        if known is not None:
            ticket.ensure(known)
        elif within is None:
            self.check_room(self.budget_candidates())
        return ticket
