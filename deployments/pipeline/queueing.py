"""When the work a gateway has routed to a model will be done: the replica's timeline.

How a model replica queues (Ray Serve 2.60's ``@serve.batch`` with
``max_concurrent_batches: 1``, the CPU setting): batches are *formed as requests
arrive*, not when the replica becomes free. The first request to arrive opens a
batch; every request arriving within ``batch_wait_timeout_s`` of it joins, up to
``max_batch_size`` slots (a request's slots are ``ModelCore.batch_cost``: its
share of ``max_batch_pixels``); a full batch closes at once. Closed batches then
run one at a time, in order, each for its fitted time for its pixels, and every
request in a batch is answered when it ends. So under light or Poisson load the
batches are mostly of one request, whatever ``max_batch_size`` says, and a
request waits for every batch ahead of it to run in full.

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
    position = 0
    while position < len(order):
        opened = ready[order[position]]
        members = [order[position]]
        slots = batch_slots(pending[order[position]].pixels, batching)
        position += 1
        while position < len(order) and ready[order[position]] <= opened + wait_s:
            more = batch_slots(pending[order[position]].pixels, batching)
            if slots + more > batching.max_batch_size:
                break
            members.append(order[position])
            slots += more
            position += 1
        start = max(free, opened if slots >= batching.max_batch_size else opened + wait_s)
        # The replica drops a request whose deadline passed before its batch starts.
        live = [i for i in members if _alive(pending[i], start)]
        pixels = sum(pending[i].pixels for i in live)
        end = start + ((fixed + slope * pixels) / 1000 / share if live else 0.0)
        free = max(end, now)  # a batch past its predicted end ends any moment now
        for index in members:
            finishes[index] = free
    return Timeline(tuple(finishes), max(free, now))
