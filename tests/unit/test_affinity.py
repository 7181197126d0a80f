"""CPU pinning: the cpu_affinity option, what a replica does with it, and its thread plan."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from deployments.adapters.device import plan_device
from deployments.affinity import Pinning, choose_cpus, pin_process
from deployments.config import ConfigError, parse_args

MODEL = {"name": "b0", "framework": "hf_segformer", "source": "x"}


def args_with(model: dict[str, Any] | None = None, gateway: dict[str, Any] | None = None) -> Any:
    return parse_args({"models": [{**MODEL, **(model or {})}], "gateway": gateway or {}})


def test_affinity_is_unset_by_default_and_takes_a_list_of_cpu_ids() -> None:
    args = args_with()
    assert args.models[0].cpu_affinity is None and args.gateway.cpu_affinity is None
    args = args_with({"cpu_affinity": [1, 0], "cpu_threads": 2}, {"cpu_affinity": [3]})
    assert args.models[0].cpu_affinity == [1, 0] and args.gateway.cpu_affinity == [3]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"cpu_affinity": [-1]}, "models.0.cpu_affinity.0: Input should be greater than"),
        ({"cpu_affinity": []}, "models.0.cpu_affinity: List should have at least 1 item"),
        ({"cpu_affinity": [0, 0]}, "CPU ids must be distinct; repeated: [0]"),
        ({"cpu_affinity": ["first"]}, "models.0.cpu_affinity.0"),
        ({"cpu_affinity": [0], "cpu_threads": 2}, "cpu_threads (2) is more than the CPUs"),
    ],
)
def test_bad_affinities_are_config_errors_with_their_path(
    options: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        args_with(options)
    assert fragment in str(raised.value)


def test_the_gateway_affinity_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"gateway.cpu_affinity.1: Input should be greater"):
        args_with(gateway={"cpu_affinity": [0, -2]})


def test_ids_the_node_lacks_are_dropped_and_none_left_means_unpinned() -> None:
    assert choose_cpus([0, 1], {0, 1, 2, 3}) == Pinning((0, 1))
    kept = choose_cpus([1, 7], {0, 1})
    assert kept.cpus == (1,) and kept.note is not None
    assert "CPUs [7] do not exist here" in kept.note and "[0, 1]" in kept.note
    none = choose_cpus([5, 6], {0, 1})
    assert none.cpus is None and none.note is not None and "unpinned" in none.note


class FakeScheduler:
    def __init__(self, available: set[int], threads: list[int]) -> None:
        self.available = available
        self.threads = threads
        self.masks: dict[int, set[int]] = {}

    def get(self, pid: int) -> set[int]:
        return set(self.available)

    def set(self, pid: int, cpus: set[int]) -> None:
        if pid == 13:
            raise OSError("thread ended")
        self.masks[pid] = set(cpus)


def test_pinning_sets_every_thread_of_the_process() -> None:
    scheduler = FakeScheduler({0, 1}, threads=[11, 12, 13])
    pinning = pin_process(
        [1], "model 'b0'", scheduler.set, scheduler.get, lambda: scheduler.threads
    )
    assert pinning == Pinning((1,))
    assert scheduler.masks == {11: {1}, 12: {1}, 0: {1}}  # 13 ended meanwhile: skipped


def test_a_wrong_id_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = FakeScheduler({0, 1}, threads=[11])
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        pinning = pin_process([4], "model 'b2'", scheduler.set, scheduler.get, lambda: [11])
    assert pinning.cpus is None and scheduler.masks == {}
    assert "model 'b2'" in caplog.text and "none exists here" in caplog.text


def test_without_an_affinity_nothing_is_pinned() -> None:
    scheduler = FakeScheduler({0, 1}, threads=[11])
    assert pin_process(None, "gateway", scheduler.set, scheduler.get) == Pinning(None)
    assert scheduler.masks == {}


def test_threads_follow_the_pinned_cpus() -> None:
    plan = plan_device(0, 0.4, None, cpu_affinity=(2, 3))
    assert (plan.cpu_threads, plan.cpu_affinity, plan.cpu_note) == (2, (2, 3), None)
    assert plan.to_dict()["cpu_affinity"] == [2, 3]
    assert plan_device(0, 0.4, 1, cpu_affinity=(2, 3)).cpu_threads == 1  # configured: fewer
    # Fewer CPUs pinned than configured (some ids missing on the node): threads capped.
    capped = plan_device(0, 0.4, 2, cpu_affinity=(1,), cpu_note="cpu_affinity: CPUs [7] ...")
    assert capped.cpu_threads == 1
    assert capped.cpu_note is not None and "capped to the 1 pinned CPUs" in capped.cpu_note
    # Unpinned: the CPUs Ray gave the replica, rounded up, as before.
    assert plan_device(0, 0.4, None).cpu_threads == 1
    assert plan_device(0, 2.5, None).cpu_threads == 3
    assert plan_device(1, 2, None, lambda: True, cpu_affinity=(0,)).kind == "cuda"
