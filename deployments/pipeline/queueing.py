"""When the work a gateway has routed to a model will be done: the replica's timeline.

How a model replica queues (:class:`~deployments.batching.Batcher` with
``max_concurrent_batches: 1``, the CPU setting): a batch is *formed when the
replica is free*. Requests wait in arrival order; when the model is free, the
oldest waiting request (the head) opens a batch, which takes every request
waiting then and those arriving until ``batch_wait_timeout_s`` after the head
arrived, up to ``max_batch_size`` slots (a request's slots are
``ModelCore.batch_cost``: its share of ``max_batch_pixels``). A batch starts as
soon as it is full or the next request does not fit, else when the head has
waited ``batch_wait_timeout_s``; it runs for its fitted time for its pixels, and
every request in it is answered when it ends. So on an idle replica a request
waits up to ``batch_wait_timeout_s`` for company, and under load the requests
that arrived while a batch ran start together as soon as it ends.

:func:`drain` replays that for the requests one gateway knows of, :class:`Pending`
entries in arrival order:

- requests sent to the replica and not answered: the oldest one's batch is
  running (or next): it started when it closed or when the model last answered,
  whichever is later, and has already run for part of its time (counting it
  whole from now would overstate the wait by up to one batch);
- requests routed to the model but still being decoded in the gateway (a
  *reservation*, ``sent=False``) arrive at their expected time and take their
  place in the queue, so two requests routed at once do not both count on an
  empty queue;
- a request arriving while a batch is still open joins it and delays the others
  in it (on a CPU a batch of two takes about twice one): :func:`drain`'s
  per-request finishes let the router check that;
- a request whose deadline has passed when its batch starts is dropped by the
  replica and costs no model time.

With several replicas the work is shared among them (times divided by the
replica count: Ray's router balances queue lengths). Pure: no clock, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from deployments.config import BatchingConfig
from deployments.pipeline.latency import LinearLatency


@dataclass
class Pending:
    """One request routed to a model and not yet answered (times in s, router clock)."""

    pixels: int
    #: When it reaches (sent) or is expected to reach (reserved) the replica.
    ready_at: float
    #: False: a reservation, still in the gateway (decoding).
    sent: bool
    #: When its budget runs out; None without one.
    deadline: float | None = None
    #: A reservation never sent by then is forgotten (its request failed before the model).
    expires_at: float = math.inf


def batch_slots(pixels: int, batching: BatchingConfig) -> int:
    """A request's cost in batch slots: ``ModelCore.batch_cost``'s rule (the replica's)."""
    slots = math.ceil(pixels * batching.max_batch_size / batching.max_batch_pixels)
    return min(batching.max_batch_size, max(1, slots))


@dataclass(frozen=True)
class Timeline:
    """What :func:`drain` predicts: each request's finish (in the order given) and when
    the replica is free after all of them."""

    finishes: tuple[float, ...]
    free_at: float


def _alive(request: Pending, start: float) -> bool:
    return request.deadline is None or request.deadline >= start


def drain(
    service: LinearLatency,
    pending: Sequence[Pending],
    now: float,
    last_done_at: float | None,
    batching: BatchingConfig,
    replicas: int = 1,
) -> Timeline:
    """Replay the replica's queue: when each of ``pending`` is answered (see the module)."""
    fixed, slope, _ = service.coefficients()
    share = max(1, replicas)
    wait_s = batching.batch_wait_timeout_s
    # A reservation overdue (its decode took longer than expected) arrives any moment now.
    ready = [p.ready_at if p.sent else max(p.ready_at, now) for p in pending]
    order = sorted(range(len(pending)), key=lambda i: (ready[i], not pending[i].sent))
    finishes = [now] * len(pending)
    free = -math.inf if last_done_at is None else last_done_at
    size = batching.max_batch_size
    position = 0
    while position < len(order):
        head = order[position]
        opened = max(free, ready[head])  # the replica is free and the head is there
        close = max(opened, ready[head] + wait_s)
        members = [head]
        slots = batch_slots(pending[head].pixels, batching)
        position += 1
        start = opened if slots >= size else close
        while slots < size and position < len(order) and ready[order[position]] <= close:
            candidate = order[position]
            more = batch_slots(pending[candidate].pixels, batching)
            if slots + more > size:  # it opens the next batch; this one starts now
                start = max(opened, ready[candidate])
                break
            members.append(candidate)
            slots += more
            position += 1
            if slots >= size or len(members) >= size:
                start = max(opened, ready[candidate])
                break
        # The replica drops a request whose deadline passed before its batch starts.
        live = [i for i in members if _alive(pending[i], start)]
        pixels = sum(pending[i].pixels for i in live)
        end = start + ((fixed + slope * pixels) / 1000 / share if live else 0.0)
        free = max(end, now)  # a batch past its predicted end ends any moment now
        for index in members:
            finishes[index] = free
    return Timeline(tuple(finishes), max(free, now))
