"""The request batcher of the model server, Ray-free: ``@serve.batch``'s rules, formed lazily.

:class:`Batcher` is what a ``ModelServer`` replica batches with, and what
:class:`~deployments.model_core.LocalEndpoint` batches with wherever Ray is absent
(benchmarks, GPU checks, in-process tests). Callers
``await submit(item)``; a background task forms batches and runs each in a worker
thread (``asyncio.to_thread``), so the event loop keeps accepting requests while a
batch computes. It is queue logic only: what a batch does (deadline drops,
timing) is the run function's business (``ModelCore.run_batch``).

A batch holds at most ``max_batch_size`` requests and their costs (slots of
``max_batch_size``, ``ModelCore.batch_cost``) sum to at most ``max_batch_size``:
Ray's ``batch_size_fn`` rule. Requests join in arrival order; a batch starts

- when it is full (its costs reach ``max_batch_size``),
- when the next request does not fit the room left (Ray closes the batch there too,
  without waiting out the timeout, and never lets a later, smaller request skip ahead),
- or when its oldest request has waited ``batch_wait_timeout_s``.

At most ``max_concurrent_batches`` batches run at once. An exception from the run
function is every request of that batch's answer; the batcher keeps serving.
A request whose caller gave up (cancelled) before its batch started is not run.

Where it differs from Ray Serve 2.x's ``_BatchQueue`` (``@serve.batch``), on purpose:

- A request that does not fit waits at the head of the queue and opens the next
  batch; Ray puts it back at the tail, so newer requests may overtake it (its
  source says so) and a large request could be overtaken again and again.
- A single request costing more than ``max_batch_size`` runs alone; Ray fails it
  with a RuntimeError. (``ModelCore.batch_cost`` caps costs at ``max_batch_size``,
  so for the model server both run such a request alone.)
- The wait counts from the oldest request's arrival, and a batch is formed only
  when a run slot is free: requests that arrive while every slot is busy join the
  next batch. Ray forms the next batch while the slots are busy (its wait counting
  from when it took the first request) and that batch then waits for a slot.
  On an idle replica the two are the same; under load Ray's batches stay at one or
  two requests (twelve requests reaching a busy replica at once ran as batches of
  4, 1, 3, 1, 1, 2, 2 under Ray Serve 2.60), which is why the model server uses
  this batcher and not ``@serve.batch``.

State is per event loop (``asyncio.run`` in tests makes a new one per call), so
``max_concurrent_batches`` bounds the batches of one loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    cost: int
    arrived: float
    future: asyncio.Future[Result]


@dataclass
class _LoopState(Generic[Item, Result]):
    """The queue and the run slots of one event loop."""

    slots: asyncio.Semaphore
    waiting: collections.deque[_Waiting[Item, Result]] = field(default_factory=collections.deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    former: asyncio.Task[None] | None = None
    running: set[asyncio.Task[None]] = field(default_factory=set)


class Batcher(Generic[Item, Result]):
    """Batches submitted items for ``run_batch`` (a blocking function, run in a thread).

    ``run_batch(items)`` returns one result per item, in order. ``cost(item)`` is an
    item's share of ``max_batch_size`` (at least 1; 1 for every item by default, which
    makes ``max_batch_size`` a plain count). ``clock`` is monotonic seconds, the one
    the wait is measured on.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        *,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_concurrent_batches: int = 1,
        cost: Callable[[Item], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1 or max_concurrent_batches < 1 or batch_wait_timeout_s < 0:
            raise ValueError(
                "max_batch_size and max_concurrent_batches must be >= 1 and "
                "batch_wait_timeout_s >= 0"
            )
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_concurrent_batches = max_concurrent_batches
        self.cost = cost
        self.clock = clock
        self._states: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, _LoopState[Item, Result]
        ] = weakref.WeakKeyDictionary()

    async def submit(self, item: Item) -> Result:
        """The item's result once its batch has run (or the batch's exception)."""
        cost = self.cost(item) if self.cost is not None else 1
        if cost < 1:
            raise ValueError(f"an item's batch cost must be at least 1, not {cost}")
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState(asyncio.Semaphore(self.max_concurrent_batches))
        future: asyncio.Future[Result] = loop.create_future()
        state.waiting.append(_Waiting(item, cost, self.clock(), future))
        state.arrived.set()
        if state.former is None or state.former.done():
            state.former = loop.create_task(self._form_batches(state))
        return await future

    async def _form_batches(self, state: _LoopState[Item, Result]) -> None:
        """Form batches while requests wait; ends when none do (``submit`` restarts it)."""
        while True:
            _drop_cancelled(state.waiting)
            if not state.waiting:
                state.former = None
                self._retire_if_idle(state)
                return
            await state.slots.acquire()
            try:
                batch = await self._next_batch(state)
            except BaseException:
                state.slots.release()
                raise
            if not batch:
                state.slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(state, batch))
            state.running.add(task)
            task.add_done_callback(state.running.discard)

    async def _next_batch(self, state: _LoopState[Item, Result]) -> list[_Waiting[Item, Result]]:
        """Take the next batch off the queue, waiting for more requests while it has room."""
        batch: list[_Waiting[Item, Result]] = []
        while True:
            _drop_cancelled(state.waiting)
            batch = [w for w in batch if not w.future.done()]  # a caller gone takes no room
            used = sum(w.cost for w in batch)
            blocked = False
            while state.waiting and len(batch) < self.max_batch_size:
                head = state.waiting[0]
                if batch and used + head.cost > self.max_batch_size:
                    blocked = True  # Ray's rule: the batch starts; the request opens the next
                    break
                batch.append(state.waiting.popleft())
                used += head.cost
            if not batch:
                return batch
            if blocked or used >= self.max_batch_size or len(batch) >= self.max_batch_size:
                return batch
            left_s = batch[0].arrived + self.batch_wait_timeout_s - self.clock()
            if left_s <= 0:
                return batch
            state.arrived.clear()
            # asyncio's TimeoutError: the builtin one only from Python 3.11 on.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.arrived.wait(), left_s)

    async def _run(
        self, state: _LoopState[Item, Result], batch: list[_Waiting[Item, Result]]
    ) -> None:
        live = [w for w in batch if not w.future.done()]
        try:
            if live:
                results = await asyncio.to_thread(self.run_batch, [w.item for w in live])
                if len(results) != len(live):
                    raise RuntimeError(
                        f"the batch function returned {len(results)} results for "
                        f"{len(live)} requests"
                    )
                for waiting, result in zip(live, results, strict=True):
                    if not waiting.future.done():
                        waiting.future.set_result(result)
        except Exception as error:  # every request of the batch sees the model's error
            for waiting in live:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
        except BaseException:  # cancelled (the loop is closing): no caller waits forever
            for waiting in live:
                waiting.future.cancel()
            raise
        finally:
            state.slots.release()
            current = asyncio.current_task()
            if current is not None:
                state.running.discard(current)
            self._retire_if_idle(state)

    def _retire_if_idle(self, state: _LoopState[Item, Result]) -> None:
        """Forget an idle loop's state (it holds its loop: a closed loop is not kept)."""
        if state.former is None and not state.waiting and not state.running:
            for loop, held in list(self._states.items()):
                if held is state:
                    del self._states[loop]


def _drop_cancelled(waiting: collections.deque[_Waiting[Item, Result]]) -> None:
    if any(w.future.done() for w in waiting):
        kept = [w for w in waiting if not w.future.done()]
        waiting.clear()
        waiting.extend(kept)
