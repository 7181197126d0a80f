"""Latency-budget routing: the policy and the latency model (hypothesis), and the service."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from deployments.adapters.device import plan_device
from deployments.config import BatchingConfig, GatewayConfig, ModelConfig, RoutingConfig
from deployments.contract import LatencySample, ModelCard, Prediction
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.errors import DeadlineExceeded, InvalidParameter
from deployments.pipeline.imaging import InputSpec
from deployments.pipeline.latency import LinearLatency, QueueState, queue_wait_ms
from deployments.pipeline.options import parse_options
from deployments.pipeline.routing import Candidate, Router, choose, explicit
from deployments.pipeline.service import SegmentationService, peek_size
from tests.images import jpeg
from tests.tiny_models import save_tiny_segformer

times = st.floats(min_value=0.1, max_value=60_000, allow_nan=False)
qualities = st.floats(min_value=0, max_value=100, allow_nan=False)
candidate_lists = st.lists(st.tuples(qualities, times), min_size=1, max_size=6).map(
    lambda rows: [Candidate(f"m{i}", q, t) for i, (q, t) in enumerate(rows)]
)


@settings(deadline=None)
@given(candidate_lists, times, times)
def test_quality_is_monotone_in_budget(candidates: list[Candidate], a: float, b: float) -> None:
    low, high = sorted((a, b))
    quality = {c.name: c.quality for c in candidates}
    chosen_low = choose(candidates, low, "m0")
    chosen_high = choose(candidates, high, "m0")
    assert quality[chosen_high.name] >= quality[chosen_low.name]


@settings(deadline=None)
@given(candidate_lists, times)
def test_never_picks_a_predicted_miss_when_something_fits(
    candidates: list[Candidate], budget: float
) -> None:
    choice = choose(candidates, budget, "m0")
    fitting = [c for c in candidates if c.predicted_ms <= budget]
    if fitting:
        assert choice.fits and choice.chosen_by == "budget"
        assert choice.predicted_ms <= budget
        assert choice.name in {c.name for c in fitting}
        assert max(c.quality for c in fitting) == next(
            c.quality for c in candidates if c.name == choice.name
        )
    else:
        assert choice.fits is False and choice.chosen_by == "fastest"
        assert choice.predicted_ms == min(c.predicted_ms for c in candidates)


@settings(deadline=None)
@given(candidate_lists, times)
def test_strict_rejects_when_nothing_fits_and_only_then(
    candidates: list[Candidate], budget: float
) -> None:
    nothing_fits = all(c.predicted_ms > budget for c in candidates)
    if nothing_fits:
        with pytest.raises(DeadlineExceeded) as raised:
            choose(candidates, budget, "m0", strict=True)
        assert raised.value.code == "budget_unreachable"
    else:
        assert choose(candidates, budget, "m0", strict=True) == choose(candidates, budget, "m0")


@settings(deadline=None)
@given(candidate_lists)
def test_without_a_budget_the_default_model_answers(candidates: list[Candidate]) -> None:
    default = candidates[-1].name
    choice = choose(candidates, None, default)
    assert (choice.name, choice.chosen_by, choice.fits) == (default, "default", None)


def test_explicit_model_keeps_the_deadline() -> None:
    assert explicit("b2", 900.0, 1000.0, strict=False).fits is True
    assert explicit("b2", 1200.0, 1000.0, strict=False).fits is False
    assert explicit("b2", 1200.0, None, strict=True).chosen_by == "explicit"
    with pytest.raises(DeadlineExceeded, match="predicted to take 1200 ms"):
        explicit("b2", 1200.0, 1000.0, strict=True)


@settings(deadline=None)
@given(
    st.floats(min_value=0, max_value=500),
    st.floats(min_value=0, max_value=1e-3),
    st.lists(st.integers(min_value=1, max_value=4_000_000), min_size=2, max_size=40),
)
def test_the_latency_fit_recovers_an_affine_batch_time(
    fixed: float, per_pixel: float, pixels: list[int]
) -> None:
    assume(len(set(pixels)) >= 2)
    model = LinearLatency(half_life=1000)
    for p in pixels:
        model.observe(p, fixed + per_pixel * p)
    for p in (0, 1_000, 500_000, 8_000_000):
        expected = fixed + per_pixel * p
        assert model.mean_ms(p) == pytest.approx(expected, rel=1e-4, abs=1e-3)
        assert model.predict_ms(p, 3.0) == pytest.approx(expected, rel=1e-3, abs=0.05)
    assert model.samples == len(pixels)


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4_000_000), st.floats(0, 10_000)), min_size=1, max_size=30),
    st.integers(0, 8_000_000),
    st.integers(0, 8_000_000),
    st.floats(0, 5),
)
def test_predictions_grow_with_pixels_and_margin(
    samples: list[tuple[int, float]], a: int, b: int, sigmas: float
) -> None:
    model = LinearLatency()
    for pixels, ms in samples:
        model.observe(pixels, ms)
    small, large = sorted((a, b))
    assert model.predict_ms(large, sigmas) >= model.predict_ms(small, sigmas) - 1e-6
    assert model.predict_ms(large, sigmas) >= model.mean_ms(large) - 1e-6
    assert all(math.isfinite(v) and v >= 0 for v in model.coefficients())


@settings(deadline=None)
@given(st.integers(0, 64), st.integers(1, 8), st.integers(1, 8))
def test_queue_wait_grows_with_work_ahead_and_shrinks_with_replicas(
    requests: int, replicas: int, batch: int
) -> None:
    model = LinearLatency(prior=[LatencySample(262_144, 300.0), LatencySample(524_288, 550.0)])
    pixels = requests * 262_144
    wait = queue_wait_ms(model, QueueState(requests, pixels), replicas, batch, batch * 262_144)
    more = queue_wait_ms(
        model, QueueState(requests + 1, pixels + 262_144), replicas, batch, batch * 262_144
    )
    assert wait >= 0 and more >= wait
    assert (
        queue_wait_ms(model, QueueState(requests, pixels), replicas + 1, batch, batch * 262_144)
        <= wait + 1e-9
    )
    assert queue_wait_ms(model, QueueState(0, 0), replicas, batch, batch * 262_144) == 0


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, False), ("", False), ("true", True), ("FALSE", False), ("1", True)]
)
def test_strict_parses_booleans(raw: str | None, expected: bool) -> None:
    assert parse_options(strict=raw).strict is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "tru"])
def test_strict_rejects_anything_else(raw: str) -> None:
    with pytest.raises(InvalidParameter, match="strict must be true or false"):
        parse_options(strict=raw)


def test_peek_size_reads_the_header_only() -> None:
    assert peek_size(jpeg(640, 480)) == (640, 480)
    assert peek_size(b"not an image") is None


# ------------------------------------------------------------------ the router, on recorded samples

SIDE = 384
SPEC = InputSpec(size=(SIDE, SIDE))
#: Batch times as recorded from a laptop core (pixels, ms): the fast and the accurate model.
FAST_WARMUP = (LatencySample(SIDE * SIDE, 40.0), LatencySample(2 * SIDE * SIDE, 70.0))
SLOW_WARMUP = (LatencySample(SIDE * SIDE, 400.0), LatencySample(2 * SIDE * SIDE, 780.0))


def recorded_card(name: str, warmup: tuple[LatencySample, ...]) -> ModelCard:
    return ModelCard(name, "hf_segformer", "random", None, ["a", "b"], SPEC, warmup)


def recorded_router(**routing: Any) -> tuple[Router, dict[str, ModelCard]]:
    batching = BatchingConfig(max_batch_size=2, max_batch_pixels=2 * SIDE * SIDE)
    models = {
        name: ModelConfig(
            name=name, framework="hf_segformer", source="x", quality=q, batching=batching
        )
        for name, q in (("fast", 10.0), ("slow", 40.0))
    }
    clock = iter(range(10**6))
    router = Router(RoutingConfig(**routing), models, "fast", clock=lambda: float(next(clock)))
    cards = {"fast": recorded_card("fast", FAST_WARMUP), "slow": recorded_card("slow", SLOW_WARMUP)}
    return router, cards


def batch(name: str, pixels: int, ms: float, batch_id: str) -> Prediction:
    return Prediction(
        labels=np.zeros((1, 1), np.uint8), queue_ms=0.0, inference_ms=ms, batch_size=1,
        batch_pixels=pixels, batch_id=batch_id,
    )  # fmt: skip


def test_budgets_choose_between_a_fast_and_an_accurate_model() -> None:
    router, cards = recorded_router()
    fast_ms = router.predict_ms(cards["fast"], (320, 240))
    slow_ms = router.predict_ms(cards["slow"], (320, 240))
    assert fast_ms < slow_ms
    loose = router.choose(cards, (320, 240), 60_000, strict=False)
    assert (loose.name, loose.chosen_by, loose.fits) == ("slow", "budget", True)
    tight = router.choose(cards, (320, 240), (fast_ms + slow_ms) / 2, strict=False)
    assert (tight.name, tight.chosen_by) == ("fast", "budget")
    late = router.choose(cards, (320, 240), fast_ms * 0.9, strict=False)
    assert (late.name, late.chosen_by, late.fits) == ("fast", "fastest", False)
    with pytest.raises(DeadlineExceeded) as raised:
        router.choose(cards, (320, 240), fast_ms * 0.9, strict=True)
    assert raised.value.code == "budget_unreachable"
    assert router.choose(cards, (320, 240), None, strict=False).chosen_by == "default"


def test_a_model_without_quality_or_with_other_labels_is_never_chosen_by_budget() -> None:
    router, cards = recorded_router()
    other = {**cards, "slow": ModelCard("slow", "mmseg", "random", None, ["x"], SPEC, SLOW_WARMUP)}
    assert router.candidates(other) == ["fast"]
    assert router.choose(other, (320, 240), 60_000, strict=False).name == "fast"


def test_routing_estimates_learn_from_served_batches() -> None:
    """The fit follows the batches replicas report (each batch counted once)."""
    router, cards = recorded_router(half_life=1000.0)
    slow = cards["slow"]
    for i, pixels in enumerate((SIDE * SIDE, 2 * SIDE * SIDE) * 10):
        prediction = batch("slow", pixels, 100.0 + pixels / 1000, f"b{i}")
        for _ in range(2):  # two requests of one batch: one sample
            router.observe(slow, prediction, 150.0, 0.0, 640 * 480, 30.0)
    info = router.info("slow")
    assert info["service"]["samples"] == 20
    assert info["service"]["ms_per_megapixel"] == pytest.approx(1000, rel=0.05)
    assert info["service"]["fixed_ms"] == pytest.approx(100, rel=0.1)
    assert info["in_flight"] == {"requests": 0, "pixels": 0}
    with router.in_flight(slow, SIDE * SIDE):
        assert router.info("slow")["in_flight"] == {"requests": 1, "pixels": SIDE * SIDE}
        assert router.queue_ms(slow) > 0
    assert router.queue_ms(slow) == 0


def test_shared_compute_counts_other_models_work_and_stops_upgrades_when_busy() -> None:
    router, cards = recorded_router(shared_compute=True, max_upgrade_utilization=0.5)
    with router.in_flight(cards["slow"], SIDE * SIDE):
        assert router.queue_ms(cards["fast"]) > 0  # one machine: slow's work delays fast
    assert router.choose(cards, (320, 240), 60_000, strict=False).name == "slow"  # idle
    for i in range(8):  # 8 s of model time within the 10 s window: busy
        router.observe(cards["slow"], batch("slow", SIDE * SIDE, 1000.0, f"b{i}"), 1, 0, 1, 1)
    assert router.utilization() > 0.5
    busy = router.choose(cards, (320, 240), 60_000, strict=False)
    assert (busy.name, busy.chosen_by) == ("fast", "budget")


@settings(deadline=None)
@given(candidate_lists, times)
def test_without_upgrades_the_fastest_fitting_model_answers(
    candidates: list[Candidate], budget: float
) -> None:
    choice = choose(candidates, budget, "m0", upgrade=False)
    fitting = [c for c in candidates if c.predicted_ms <= budget]
    if fitting:
        assert choice.fits and choice.predicted_ms == min(c.predicted_ms for c in fitting)
    else:
        assert choice == choose(candidates, budget, "m0")


# ------------------------------------------------------------------ the service, in-process


def core_for(directory: Path, name: str, quality: float) -> ModelCore:
    config = ModelConfig(
        name=name,
        framework="hf_segformer",
        source=str(directory),
        weights="pretrained",
        quality=quality,
        batching=BatchingConfig(max_batch_size=2, max_batch_pixels=2 * 384 * 384),
    )
    return ModelCore(config, plan_device(0, 2, None))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelCore]:
    fast = save_tiny_segformer(tmp_path_factory.mktemp("fast"), size=64)
    slow = save_tiny_segformer(tmp_path_factory.mktemp("slow"), size=384)
    return {"fast": core_for(fast, "fast", 10.0), "slow": core_for(slow, "slow", 40.0)}


@pytest.fixture(scope="module")
def routed(two_models: dict[str, ModelCore]) -> SegmentationService:
    endpoints = {name: LocalEndpoint(core) for name, core in two_models.items()}
    return SegmentationService(
        endpoints, [c.config for c in two_models.values()], GatewayConfig(default_model="fast")
    )


def test_warm_up_times_batches_of_growing_size(two_models: dict[str, ModelCore]) -> None:
    for side, core in zip((64, 384), two_models.values(), strict=True):
        warmup = core.card().warmup
        assert [s.pixels for s in warmup] == [side * side, 2 * side * side]
        assert all(s.ms > 0 for s in warmup)


def test_the_service_routes_by_budget_and_reports_how(routed: SegmentationService) -> None:
    image = jpeg(320, 240, seed=5)
    loose = asyncio.run(routed.segment(image, parse_options(budget_ms="60000")))
    assert loose.model == "slow" and loose.budget.chosen_by == "budget"
    assert loose.budget.met is True and loose.budget.budget_ms == 60000
    default = asyncio.run(routed.segment(image, parse_options()))
    assert default.model == "fast" and default.budget.chosen_by == "default"
    assert default.budget.met is None
    named = asyncio.run(routed.segment(image, parse_options(model="slow", budget_ms="60000")))
    assert named.model == "slow" and named.budget.chosen_by == "explicit"
    info = routed.router.info("slow")
    assert info["service"]["samples"] == 2 and info["in_flight"] == {"requests": 0, "pixels": 0}


def test_strict_and_spent_budgets_are_answered_without_running(
    routed: SegmentationService, two_models: dict[str, ModelCore]
) -> None:
    image = jpeg(1600, 1200, seed=6)
    ran = {n: c.stats["requests"] + c.stats["expired"] for n, c in two_models.items()}
    with pytest.raises(DeadlineExceeded) as raised:  # below the 20 ms decode prior alone
        asyncio.run(routed.segment(image, parse_options(budget_ms="1", strict="true")))
    assert raised.value.code == "budget_unreachable"
    # A budget used up before the model can start is answered with the timeout, not run.
    with pytest.raises(DeadlineExceeded, match="used up before the model could run"):
        asyncio.run(routed.segment(image, parse_options(budget_ms="0.01")))
    assert {n: c.stats["requests"] + c.stats["expired"] for n, c in two_models.items()} == ran


def test_budget_routing_skips_models_at_their_admission_capacity() -> None:
    router, cards = recorded_router()
    assert router.choose(cards, (320, 240), 60_000, False).name == "slow"
    assert router.choose(cards, (320, 240), 60_000, False, full={"slow"}).name == "fast"
    # The default model full: the accurate one still serves a budget it fits.
    assert router.choose(cards, (320, 240), 60_000, False, full={"fast"}).name == "slow"
    # Every candidate full: routing as usual (admission refuses the one chosen).
    assert router.choose(cards, (320, 240), 60_000, False, full={"fast", "slow"}).name == "slow"
    # No budget: the default model, full or not.
    assert router.choose(cards, (320, 240), None, False, full={"fast"}).name == "fast"
