"""The gateway's shared replica-state snapshot: one ``serve.status()`` for every caller."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deployments.gateway import ReplicaStates


class Controller:
    """A blocking status call that counts how often it is made (and can be held)."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.release.set()

    def __call__(self) -> dict[str, dict[str, int]]:
        self.calls += 1
        self.release.wait(10)
        return {"model_b0": {"RUNNING": self.calls}, "gateway": {"RUNNING": 1}}


def test_callers_that_find_the_snapshot_stale_together_share_one_status_call() -> None:
    controller = Controller()
    controller.release.clear()
    states = ReplicaStates(max_age_s=60, fetch=controller)

    async def many() -> list[dict[str, int]]:
        callers = [asyncio.ensure_future(states.of("model_b0")) for _ in range(8)]
        await asyncio.sleep(0.05)  # all eight are waiting on the one fetch
        controller.release.set()
        return await asyncio.gather(*callers)

    assert asyncio.run(many()) == [{"RUNNING": 1}] * 8
    assert controller.calls == 1


def test_a_fresh_snapshot_is_reused_and_a_stale_one_fetched_again() -> None:
    controller = Controller()
    states = ReplicaStates(max_age_s=60, fetch=controller)

    async def scenario() -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]:
        first = await states.of("model_b0")
        again = await states.of("model_b0")  # within 60 s: the same snapshot
        unknown = await states.of("model_b2")
        time.sleep(0.02)
        forced = (await states.get(max_age_s=0.01))["model_b0"]  # older than asked: refetched
        return first, again, unknown, forced

    first, again, unknown, forced = asyncio.run(scenario())
    assert first == again == {"RUNNING": 1}
    assert unknown == {}
    assert forced == {"RUNNING": 2}
    assert controller.calls == 2


def test_a_failed_status_call_is_not_kept_and_the_next_caller_tries_again() -> None:
    calls = []

    def flaky() -> dict[str, dict[str, int]]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("controller restarting")
        return {"gateway": {"RUNNING": 2}}

    states = ReplicaStates(max_age_s=60, fetch=flaky)

    async def scenario() -> dict[str, int]:
        with pytest.raises(RuntimeError, match="restarting"):
            await states.of("gateway")
        return await states.of("gateway")

    assert asyncio.run(scenario()) == {"RUNNING": 2}
    assert len(calls) == 2


def test_latest_never_waits_and_refreshes_a_stale_snapshot_in_the_background() -> None:
    controller = Controller()
    states = ReplicaStates(max_age_s=60, fetch=controller)

    async def scenario() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]], int]:
        before = states.latest(max_age_s=5)  # nothing fetched yet: empty, a fetch started
        states.latest(max_age_s=5)  # the same fetch, not a second one
        await states.get()  # waits for that fetch (no sleep: no timing)
        return before, states.latest(max_age_s=5), controller.calls

    before, after, calls = asyncio.run(scenario())
    assert before == {}
    assert after["model_b0"] == {"RUNNING": 1}
    assert calls == 1
