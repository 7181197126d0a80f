"""Admission control's arithmetic and tickets (no model, no Ray)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.config import AdmissionConfig, AutoscalingConfig, GatewayConfig, ModelConfig
from deployments.pipeline.admission import Admission
from deployments.pipeline.errors import Overloaded
from deployments.pipeline.options import parse_options


def model(name: str, **extra: Any) -> ModelConfig:
    return ModelConfig(name=name, framework="hf_segformer", source="x", **extra)


def admission(
    *models: ModelConfig,
    replicas: dict[str, int] | None = None,
    gateways: int | None = None,
    **gateway: Any,
) -> Admission:
    counts = replicas or {}
    return Admission(
        GatewayConfig(**gateway),
        {m.name: m for m in models},
        lambda name: counts.get(name, 1),
        lambda: gateways,
    )


def test_capacity_is_what_the_replicas_hold() -> None:
    a = admission(
        model("one", max_ongoing_requests=4, max_queued_requests=3),
        model("three", max_ongoing_requests=4, max_queued_requests=3, num_replicas=3),
        model("unbounded", max_queued_requests=-1),
        replicas={"three": 3},
    )
    assert a.capacity("one") == 4 * 1 + 3
    assert a.capacity("three") == 4 * 3 + 3
    assert a.capacity("unbounded") is None  # Ray queues without bound: never refused here
    assert a.info("one") == {"in_flight": 0, "capacity": 7}


def test_autoscaling_uses_the_replicas_running_now() -> None:
    scaled = model(
        "m",
        max_ongoing_requests=2,
        max_queued_requests=1,
        autoscaling_config=AutoscalingConfig(min_replicas=1, max_replicas=8),
    )
    running = {"m": 1}
    a = Admission(GatewayConfig(), {"m": scaled}, lambda name: running[name], None)
    assert a.capacity("m") == 3
    running["m"] = 5  # the autoscaler added replicas: the bound follows
    assert a.capacity("m") == 11


def test_gateways_share_the_running_slots_but_each_has_its_own_queue() -> None:
    m = model("m", max_ongoing_requests=10, max_queued_requests=4, num_replicas=2)
    replicas = {"m": 2}
    assert admission(m, replicas=replicas, gateways=3).capacity("m") == 7 + 4  # ceil(20 / 3)
    whole = admission(
        m, replicas=replicas, gateways=3, admission=AdmissionConfig(share_among_gateways=False)
    )
    assert whole.capacity("m") == 24
    # Unknown yet: the configured gateway count.
    assert admission(m, replicas=replicas, num_replicas=4).capacity("m") == 5 + 4
    scaled = GatewayConfig(autoscaling_config=AutoscalingConfig(min_replicas=2, max_replicas=4))
    assert Admission(scaled, {"m": m}, lambda _: 2).capacity("m") == 10 + 4


def test_the_factor_and_the_switch() -> None:
    m = model("m", max_ongoing_requests=4, max_queued_requests=4)
    assert admission(m, admission=AdmissionConfig(capacity_factor=0.5)).capacity("m") == 4
    assert admission(m, admission=AdmissionConfig(capacity_factor=0.01)).capacity("m") == 1
    off = admission(m, admission=AdmissionConfig(enabled=False))
    assert off.capacity("m") is None
    with off.enter("m") as ticket:
        ticket.take("m", 1000)
        assert not off.full("m")
    assert off.in_flight("m") == 0


def test_the_next_request_past_capacity_is_refused_and_slots_come_back() -> None:
    a = admission(model("m", max_ongoing_requests=1, max_queued_requests=1), model("other"))
    first, second = a.enter("m"), a.enter("m")
    assert a.in_flight("m") == 2 and a.full("m")
    with pytest.raises(Overloaded) as refused:
        a.enter("m")
    assert refused.value.code == "overloaded" and refused.value.kind.http_status == 503
    assert refused.value.kind.grpc_code_name == "RESOURCE_EXHAUSTED"
    assert a.in_flight("m") == 2  # a refusal holds nothing
    with a.enter("other"):
        assert a.in_flight("other") == 1  # another model is unaffected
    first.release()
    first.release()  # once only
    assert a.in_flight("m") == 1
    with pytest.raises(ValueError, match="inside"), a.enter("m"):
        raise ValueError("an error inside the request")
    assert a.in_flight("m") == 1
    second.release()
    assert a.in_flight("m") == 0


def test_a_cancelled_request_gives_its_slot_back() -> None:
    a = admission(model("m", max_ongoing_requests=1, max_queued_requests=0))

    async def request(gate: asyncio.Event) -> None:
        with a.enter("m"):
            await gate.wait()

    async def main() -> None:
        gate = asyncio.Event()
        task = asyncio.create_task(request(gate))
        while a.in_flight("m") == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert a.in_flight("m") == 0

    asyncio.run(main())


def test_a_ticket_within_another_does_not_count_twice() -> None:
    a = admission(model("m", max_ongoing_requests=1, max_queued_requests=0))
    with a.enter("m") as outer:
        with a.enter("m", None, within=outer) as inner:  # the service, inside the protocol
            inner.ensure("m")
            assert a.in_flight("m") == 1
        assert a.in_flight("m") == 1
    assert a.in_flight("m") == 0


def test_the_rest_of_a_batch_takes_its_slots_all_or_none() -> None:
    a = admission(model("m", max_ongoing_requests=2, max_queued_requests=1))
    with a.enter("m") as batch:
        batch.take_more("m", 5)  # alone on the model: larger than the capacity, still served
        assert a.in_flight("m") == 6
    with a.enter("m") as other, a.enter("m") as batch:
        with pytest.raises(Overloaded):
            batch.take_more("m", 2)  # 2 + 2 > 3 while another request is in flight
        assert a.in_flight("m") == 2
        batch.take_more("m", 1)
        assert a.in_flight("m") == 3
        assert other.covers("m")
    assert a.in_flight("m") == 0


def test_what_is_known_before_the_body() -> None:
    a = admission(model("b0", quality=30.0), model("b2", quality=40.0), model("named"))
    assert a.known_model("named", None) == "named"
    assert a.known_model("auto", parse_options()) == "b0"  # no budget: the default model
    assert a.known_model("auto", parse_options(budget_ms="500")) is None  # routed by size
    assert a.known_model("auto", None) is None  # v2: the budget is in the body
    assert a.budget_candidates() == ["b0", "b2"]


def test_a_budget_request_is_refused_early_only_when_no_candidate_has_room() -> None:
    small = {"max_ongoing_requests": 1, "max_queued_requests": 0}
    a = admission(model("b0", quality=30.0, **small), model("b2", quality=40.0, **small))
    budget = parse_options(budget_ms="500")
    with a.enter("b0"):
        with a.enter("auto", budget) as ticket:  # b2 has room: routing decides
            assert not ticket.covers("b0") and not ticket.covers("b2")
        with a.enter("b2"), pytest.raises(Overloaded, match="every model"):
            a.enter("auto", budget)
    assert (a.in_flight("b0"), a.in_flight("b2")) == (0, 0)
