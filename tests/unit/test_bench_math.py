"""``segserve bench``'s pure parts: budget mixes, schedules, percentiles, one level's record.

Samples are made here (recorded latencies), never measured: nothing depends on speed.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from clients.bench import (
    NO_BUDGET,
    Sample,
    Workload,
    attainment,
    parse_budget_mix,
    parse_levels,
    percentiles,
    poisson_schedule,
    summarize,
)


def test_a_budget_mix_is_budgets_with_normalised_shares() -> None:
    mix = parse_budget_mix("500:0.5,2000:1.5")
    assert mix.budgets == (500.0, 2000.0)
    assert mix.weights == pytest.approx((0.25, 0.75))
    assert parse_budget_mix("800").budgets == (800.0,)
    assert parse_budget_mix("none:1,300:1").budgets == (None, 300.0)
    assert parse_budget_mix(None) is NO_BUDGET
    assert parse_budget_mix("  ") is NO_BUDGET


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fast:1", r"not MS\[:SHARE\]"),
        ("500:x", r"not MS\[:SHARE\]"),
        ("-5:1", "positive number of milliseconds"),
        ("500:0", "must be positive"),
        ("500:1,500:2", "listed twice"),
        (",", "names no budget"),
    ],
)
def test_a_bad_budget_mix_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_budget_mix(text)


def test_drawn_budgets_follow_the_shares_and_the_seed() -> None:
    mix = parse_budget_mix("100:1,1000:3")
    workload = Workload([b"a", b"b", b"c"], mix, seed=3)
    requests = [workload.next() for _ in range(4000)]
    assert [r.image for r in requests[:4]] == [b"a", b"b", b"c", b"a"]  # cycled
    share = sum(r.budget_ms == 1000.0 for r in requests) / len(requests)
    assert share == pytest.approx(0.75, abs=0.03)
    again = Workload([b"a"], mix, seed=3)
    assert [again.next().budget_ms for _ in range(50)] == [r.budget_ms for r in requests[:50]]


def test_levels_parse_as_positive_numbers() -> None:
    assert parse_levels("1,4,16") == [1.0, 4.0, 16.0]
    assert parse_levels(None) == []
    with pytest.raises(ValueError, match="positive"):
        parse_levels("4,0")


def test_a_poisson_schedule_has_the_rate_and_is_reproducible() -> None:
    arrivals = poisson_schedule(20.0, random.Random(1), duration=500.0)
    assert arrivals[0] == 0.0 and all(b > a for a, b in itertools.pairwise(arrivals))
    assert max(arrivals) < 500.0
    assert len(arrivals) / 500.0 == pytest.approx(20.0, rel=0.03)
    gaps = np.diff(arrivals)
    # Exponential gaps: mean 1/rate and standard deviation about equal to it.
    assert gaps.mean() == pytest.approx(0.05, rel=0.03)
    assert gaps.std() == pytest.approx(0.05, rel=0.05)
    assert poisson_schedule(20.0, random.Random(1), duration=500.0) == arrivals
    assert len(poisson_schedule(3.0, random.Random(1), count=17)) == 17
    assert len(poisson_schedule(3.0, random.Random(1), duration=1e6, count=5)) == 5
    with pytest.raises(ValueError, match="duration or a count"):
        poisson_schedule(3.0, random.Random(1))


def test_percentiles_interpolate_between_samples() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    p = percentiles(values)
    assert p["p50"] == pytest.approx(50.5)
    assert p["p90"] == pytest.approx(90.1)
    assert p["p99"] == pytest.approx(99.01)
    assert p["p99.9"] == pytest.approx(99.901)
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "p99.9": None}


def ok(latency: float, budget: float | None, model: str = "fast", by: str = "budget") -> Sample:
    timings = {"decode": 1.0, "queue": 2.0, "inference": latency - 5, "encode": 2.0}
    timings["total"] = sum(timings.values())
    return Sample(True, "", latency, budget, model=model, chosen_by=by, timings=timings)


def failed(code: str, latency: float, budget: float | None) -> Sample:
    return Sample(False, code, latency, budget)


def test_goodput_counts_answers_within_their_own_budget() -> None:
    samples = [
        ok(90, 100),  # in budget
        ok(150, 100),  # answered late
        ok(150, 1000, model="accurate"),  # in its larger budget
        ok(400, None, by="default"),  # no budget: answered is good
        failed("deadline_exceeded", 100, 100),
        failed("overloaded", 3, 1000),
    ]
    record = summarize(samples, elapsed_s=2.0, level={"mode": "closed", "concurrency": 2})
    assert record["mode"] == "closed" and record["concurrency"] == 2
    assert record["sent"] == 6 and record["ok"] == 4
    assert record["errors"] == {"deadline_exceeded": 1, "overloaded": 1}
    assert record["throughput_rps"] == pytest.approx(2.0)
    assert record["goodput_rps"] == pytest.approx(1.5)
    assert record["slo_attainment"] == pytest.approx(3 / 6)
    assert record["attainment_by_budget"] == {"100": pytest.approx(1 / 3), "1000": 0.5}
    assert record["model_counts"] == {"accurate": 1, "fast": 3}
    assert record["model_share"] == {"accurate": 0.25, "fast": 0.75}
    assert record["chosen_by_share"] == {"budget": 0.75, "default": 0.25}
    assert record["latency_ms"]["p50"] == pytest.approx(150.0)  # of answers only
    server = record["server_timings_ms"]
    assert server["p50"]["queue"] == 2.0
    assert server["mean"]["inference"] == pytest.approx((85 + 145 + 145 + 395) / 4)


def test_the_attainment_curve_rises_to_the_share_answered() -> None:
    samples = [ok(10, None), ok(20, None), ok(40, None), failed("overloaded", 1, None)]
    assert attainment(samples, [5, 10, 20, 39, 40, 1000]) == [0, 0.25, 0.5, 0.5, 0.75, 0.75]
    curve = summarize(samples, 1.0, {"mode": "open", "rate": 4.0})["attainment_curve"]
    assert curve["targets_ms"] == sorted(curve["targets_ms"])
    assert curve["attained"][0] == 0.0 and curve["attained"][-1] == 0.75


def test_a_level_without_answers_still_reports() -> None:
    record = summarize([failed("unreachable", 1, None)] * 3, 1.0, {"mode": "open", "rate": 1.0})
    assert record["ok"] == 0 and record["errors"] == {"unreachable": 3}
    assert record["latency_ms"]["p99"] is None
    assert record["model_share"] == {} and record["attainment_curve"]["targets_ms"] == []
