"""The Ray-free batcher: batch formation, order, errors, concurrency, deadline drops.

Batches are asserted by their composition, never by measured time. A fake model
run function blocks on a ``threading.Event`` where a test needs a batch to be
running while it submits more; a fake clock decides how long a request has waited.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from deployments.adapters.device import plan_device
from deployments.batching import Batcher
from deployments.config import BatchingConfig, ModelConfig
from deployments.contract import Prediction, PredictRequest
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.errors import DeadlineExceeded, SegServeError
from tests.images import scene

T = TypeVar("T")

#: A timeout no test waits out: a batch that starts shows it did not wait for it.
FOREVER_S = 600.0
#: Guard on each test's awaits: a hang fails the test instead of the suite's timeout.
GUARD_S = 60.0


class FakeModel:
    """A batch function that records its batches; ``hold()`` makes the next ones block."""

    def __init__(self, fail_on: set[str] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on or set()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def __call__(self, items: list[str]) -> list[str]:
        with self._lock:
            self.batches.append(list(items))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.started.release()
        try:
            if not self.gate.wait(GUARD_S):
                raise AssertionError("the test never released the batch")
            if self.fail_on & set(items):
                raise ValueError(f"model failed on {sorted(self.fail_on & set(items))}")
            return [item.upper() for item in items]
        finally:
            with self._lock:
                self.running -= 1

    async def wait_started(self, batches: int = 1) -> None:
        """Until ``batches`` more batches have entered the model."""
        for _ in range(batches):
            started = await asyncio.to_thread(self.started.acquire, True, GUARD_S)
            assert started, "no batch started"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(coroutine: Callable[[], Awaitable[T]]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coroutine(), GUARD_S)

    return asyncio.run(guarded())


async def settle() -> None:
    """Let every ready task run (submits queue their items, the former takes its turn)."""
    for _ in range(5):
        await asyncio.sleep(0)


def cost_by_name(item: str) -> int:
    """Items like ``"a"`` cost 1, ``"b:3"`` cost 3."""
    return int(item.split(":")[1]) if ":" in item else 1


def test_a_full_batch_starts_without_waiting_and_results_keep_their_order() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=FOREVER_S)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(batcher.submit(f"r{i}") for i in range(8))))

    assert run(main) == [f"R{i}" for i in range(8)]
    assert model.batches == [["r0", "r1", "r2", "r3"], ["r4", "r5", "r6", "r7"]]


def test_a_request_that_waited_the_timeout_for_a_busy_model_starts_at_once() -> None:
    """The wait counts from the oldest request's arrival, on the batcher's clock: requests
    queued behind a running batch for longer than the timeout start as soon as it ends,
    with what is there (a timeout counted from then would hang this test)."""
    model = FakeModel()
    clock = FakeClock()
    batcher = Batcher(
        model, max_batch_size=8, batch_wait_timeout_s=FOREVER_S, cost=cost_by_name, clock=clock
    )

    async def main() -> list[str]:
        model.hold()
        first = asyncio.ensure_future(batcher.submit("a:8"))  # a full batch: it starts
        await model.wait_started()
        queued = [asyncio.ensure_future(batcher.submit(x)) for x in ("b", "c", "d")]
        await settle()
        clock.now = 2 * FOREVER_S
        model.release()
        return [await first, *await asyncio.gather(*queued)]

    assert run(main) == ["A:8", "B", "C", "D"]
    assert model.batches == [["a:8"], ["b", "c", "d"]]


def test_a_partial_batch_starts_after_a_real_wait_timeout() -> None:
    """The wait ends by itself: three requests, room for eight, a short timeout."""
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=8, batch_wait_timeout_s=0.01)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(batcher.submit(x) for x in "xyz")))

    assert run(main) == ["X", "Y", "Z"]
    assert model.batches == [["x", "y", "z"]]


def test_requests_arriving_while_a_batch_runs_join_the_next_batch() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=3, batch_wait_timeout_s=FOREVER_S)

    async def main() -> None:
        model.hold()
        first = [asyncio.ensure_future(batcher.submit(x)) for x in "abc"]
        await model.wait_started()
        later = [asyncio.ensure_future(batcher.submit(x)) for x in "defg"]
        await settle()
        assert len(model.batches) == 1  # one slot: nothing else started
        model.release()
        assert await asyncio.gather(*first, *later[:3]) == list("ABCDEF")
        await settle()
        assert not later[3].done()  # "g" waits for company (the timeout is never reached)
        last = await asyncio.gather(later[3], batcher.submit("h"), batcher.submit("i"))
        assert list(last) == list("GHI")

    run(main)
    assert model.batches == [list("abc"), list("def"), list("ghi")]


def test_a_request_whose_caller_gave_up_is_not_run_and_takes_no_room() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=2, batch_wait_timeout_s=FOREVER_S)

    async def main() -> list[str]:
        gone = asyncio.ensure_future(batcher.submit("a"))
        await settle()  # "a" is in the batch being formed
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        return list(await asyncio.gather(batcher.submit("b"), batcher.submit("c")))

    assert run(main) == ["B", "C"]
    assert model.batches == [["b", "c"]]


def test_the_cost_budget_splits_batches_in_arrival_order() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=FOREVER_S, cost=cost_by_name)
    items = ["a", "b:2", "c:2", "d", "e:3", "f:9", "g", "h", "i", "j"]

    async def main() -> list[str]:
        return list(await asyncio.gather(*(batcher.submit(x) for x in items)))

    assert run(main) == [x.upper() for x in items]
    assert model.batches == [
        ["a", "b:2"],  # "c:2" does not fit the room left (1): the batch starts
        ["c:2", "d"],  # "e:3" does not fit; no later, smaller request skips ahead of it
        ["e:3"],
        ["f:9"],  # more than a whole batch costs: it runs alone, it is not refused
        ["g", "h", "i", "j"],
    ]


def test_without_a_cost_function_max_batch_size_is_a_count() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=2, batch_wait_timeout_s=0.0)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(batcher.submit(x) for x in "abcde")))

    assert run(main) == list("ABCDE")
    assert model.batches == [["a", "b"], ["c", "d"], ["e"]]


def test_a_cost_below_one_slot_is_refused() -> None:
    batcher = Batcher(FakeModel(), max_batch_size=2, batch_wait_timeout_s=0.0, cost=len)
    with pytest.raises(ValueError, match="at least 1"):
        run(lambda: batcher.submit(""))
    with pytest.raises(ValueError, match="must be >= 1"):
        Batcher(FakeModel(), max_batch_size=0, batch_wait_timeout_s=0.0)


def test_a_model_error_reaches_every_request_of_its_batch_and_the_batcher_goes_on() -> None:
    model = FakeModel(fail_on={"bad"})
    batcher = Batcher(model, max_batch_size=3, batch_wait_timeout_s=FOREVER_S)

    async def main() -> tuple[list[str | BaseException], list[str]]:
        failed = await asyncio.gather(
            *(batcher.submit(x) for x in ("a", "bad", "c")), return_exceptions=True
        )
        after = await asyncio.gather(*(batcher.submit(x) for x in ("d", "e", "f")))
        return list(failed), list(after)

    failed, after = run(main)
    assert all(isinstance(e, ValueError) and "bad" in str(e) for e in failed)
    assert after == ["D", "E", "F"]


def test_a_wrong_number_of_results_is_an_error_for_the_batch() -> None:
    def one_short(items: list[str]) -> list[str]:
        return items[:1]

    batcher = Batcher(one_short, max_batch_size=2, batch_wait_timeout_s=FOREVER_S)

    async def main() -> list[str | BaseException]:
        return list(
            await asyncio.gather(batcher.submit("a"), batcher.submit("b"), return_exceptions=True)
        )

    assert all(isinstance(e, RuntimeError) and "1 results for 2" in str(e) for e in run(main))


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_max_concurrent_batches_bounds_the_batches_in_the_model(slots: int) -> None:
    model = FakeModel()
    batcher = Batcher(
        model, max_batch_size=2, batch_wait_timeout_s=FOREVER_S, max_concurrent_batches=slots
    )

    async def main() -> list[str]:
        model.hold()
        futures = [asyncio.ensure_future(batcher.submit(f"r{i}")) for i in range(10)]
        await model.wait_started(slots)
        await settle()
        assert len(model.batches) == slots  # every slot busy, the rest wait
        model.release()
        return list(await asyncio.gather(*futures))

    assert run(main) == [f"R{i}" for i in range(10)]
    assert model.most_running == slots
    assert [len(b) for b in model.batches] == [2] * 5


def test_each_event_loop_gets_its_own_queue() -> None:
    """``asyncio.run`` per call (as the in-process tests do) reuses one batcher."""
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=2, batch_wait_timeout_s=FOREVER_S)

    async def pair() -> list[str]:
        return list(await asyncio.gather(batcher.submit("a"), batcher.submit("b")))

    assert [run(pair) for _ in range(3)] == [["A", "B"]] * 3
    assert not batcher._states  # idle loops are forgotten


# ------------------------------------------------------- with the real ModelCore


@pytest.fixture(scope="module")
def core(tiny_segformer_dir: Path) -> ModelCore:
    config = ModelConfig(
        name="tiny",
        framework="hf_segformer",
        source=str(tiny_segformer_dir),
        weights="pretrained",
        warmup_batches=0,
        batching=BatchingConfig(
            max_batch_size=4, max_batch_pixels=4 * 64 * 64, batch_wait_timeout_s=10.0
        ),
    )
    return ModelCore(config, plan_device(0, 1, None))


def test_local_endpoint_batches_by_pixels_and_drops_expired_requests(core: ModelCore) -> None:
    endpoint = LocalEndpoint(core)
    before = dict(core.stats)
    small = [
        PredictRequest(scene(64, 64, seed=i), (16, 16), budget_ms=FOREVER_S * 1000)
        for i in range(3)
    ]
    expired = PredictRequest(scene(64, 64, seed=9), (16, 16), budget_ms=0.0)
    # The first four fill a batch (4 slots). Twice the per-slot pixels: this one costs
    # two slots and, with the two small ones after it, fills the second.
    large = PredictRequest(scene(128, 64, seed=5), (32, 16))
    tail = [PredictRequest(scene(64, 64, seed=i), (8, 8)) for i in range(2)]

    async def main() -> list[Prediction | BaseException]:
        requests = [*small, expired, large, *tail]
        return list(
            await asyncio.gather(*(endpoint.predict(r) for r in requests), return_exceptions=True)
        )

    *ran, late, big, last1, last2 = run(main)
    assert isinstance(late, DeadlineExceeded)
    assert all(isinstance(p, Prediction) for p in (*ran, big, last1, last2))
    first = [p for p in ran if isinstance(p, Prediction)]
    # The expired request took a slot in the first batch but no model time.
    assert {p.batch_id for p in first} == {first[0].batch_id} and first[0].batch_size == 3
    assert isinstance(big, Prediction) and isinstance(last1, Prediction)
    assert big.batch_size == 3 and big.batch_id == last1.batch_id
    assert big.labels.shape == (16, 32) and last1.labels.shape == (8, 8)
    # Each answer is its own image's: the same as that image alone.
    alone = core.run_batch([PredictRequest(small[1].image, (16, 16))])[0]
    assert not isinstance(alone, SegServeError)
    assert (first[1].labels == alone.labels).mean() >= 0.98
    assert core.stats["expired"] == before["expired"] + 1
    assert core.stats["batches"] == before["batches"] + 3  # two batches + the alone run
