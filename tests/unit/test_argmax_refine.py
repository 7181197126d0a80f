"""The refined arg-max equals the full upsample-then-argmax exactly, ties included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deployments.adapters import bilinear_argmax, bilinear_replay
from deployments.adapters.bilinear_argmax import (
    CellAnalysis,
    candidate_classes,
    contenders,
    upsample_argmax,
)
from deployments.adapters.bilinear_replay import replayed_arithmetic

KINDS = ("normal", "integers", "repeated", "ulp", "constant", "dominant", "smooth")


def reference(logits: torch.Tensor, height: int, width: int, align_corners: bool) -> torch.Tensor:
    upsampled = F.interpolate(
        logits[None], size=(height, width), mode="bilinear", align_corners=align_corners
    )
    return upsampled[0].argmax(0)


def make_logits(kind: str, classes: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Scores with the ties and near ties that trip an inexact arg-max."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(classes, height, width, generator=generator)
    if kind == "integers":  # a small set of values: ties everywhere, exact halfway sums
        logits = torch.randint(-2, 3, (classes, height, width), generator=generator).float()
    elif kind == "repeated":  # identical channels: every tie goes to the lower id
        source = torch.randint(0, classes, (classes,), generator=generator)
        logits = logits[source]
    elif kind == "ulp":  # one unit in the last place apart: rounding decides every pixel
        base = logits[:1].expand(classes, height, width)
        step = torch.randint(-1, 2, (classes, height, width), generator=generator)
        logits = torch.where(step == 0, base, torch.nextafter(base, step * torch.inf))
    elif kind == "constant":  # flat channels, some equal to each other
        flat = torch.randint(-1, 2, (classes, 1, 1), generator=generator).float()
        half = classes // 2
        logits[:half] = flat[:half].expand(half, height, width)
    elif kind == "dominant":  # a trained model's: few classes win, most are far below
        logits -= 6
        winners = torch.randint(0, classes, (min(3, classes),), generator=generator)
        logits[winners] += 6 + 3 * torch.randn(len(winners), 1, 1, generator=generator)
    elif kind == "noise":  # random weights: near-flat scores, many classes in every cell
        logits = logits * 0.2 + torch.randn(classes, 1, 1, generator=generator) * 0.6
    elif kind == "smooth":  # a few smooth fields crossing, the rest far below
        coarse = torch.randn(1, classes, 3, 3, generator=generator) * 4
        logits = F.interpolate(coarse, (height, width), mode="bilinear", align_corners=True)[0]
        logits[6:] -= 20
    return logits.contiguous()


@pytest.fixture(params=["auto", "replay", "upsample", "unknown", "tiny-chunks"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way the undecided pixels can be settled."""
    if request.param != "auto":  # examine cells whatever the scale
        monkeypatch.setattr(bilinear_argmax, "CELL_RATIO", 0)
    if request.param == "replay":  # always replay, never upsample the classes in doubt
        monkeypatch.setattr(bilinear_argmax, "REPLAY_COST", 0)
    elif request.param == "upsample":
        monkeypatch.setattr(bilinear_argmax, "REPLAY_COST", 10**9)
    elif request.param == "unknown":  # a kernel whose rounding is not known
        monkeypatch.setattr(bilinear_argmax, "replayed_arithmetic", lambda device: None)
    elif request.param == "tiny-chunks":
        monkeypatch.setattr(bilinear_argmax, "REPLAY_COST", 0)
        monkeypatch.setattr(bilinear_argmax, "PIXEL_CHUNK", 301)
        monkeypatch.setattr(bilinear_argmax, "CLASS_CHUNK", 2)
        monkeypatch.setattr(bilinear_argmax, "CELL_CHUNK", 3)
        monkeypatch.setattr(bilinear_argmax, "STRONG", 1)
    return str(request.param)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(KINDS),
    classes=st.integers(1, 24),
    in_h=st.integers(1, 14),
    in_w=st.integers(1, 14),
    out_h=st.one_of(st.integers(1, 160), st.sampled_from([0])),
    out_w=st.one_of(st.integers(1, 160), st.sampled_from([0])),
    align_corners=st.booleans(),
    seed=st.integers(0, 2**16),
)
# Found by a fresh-clone run: a 1x1 input, which PyTorch's kernel rounds its own way.
@example(kind="ulp", classes=4, in_h=1, in_w=1, out_h=2, out_w=127, align_corners=False, seed=0)
def test_equals_the_full_upsample_argmax(
    path: str,
    kind: str,
    classes: int,
    in_h: int,
    in_w: int,
    out_h: int,
    out_w: int,
    align_corners: bool,
    seed: int,
) -> None:
    out_h, out_w = out_h or in_h, out_w or in_w  # 0: the input size (no scaling)
    logits = make_logits(kind, classes, in_h, in_w, seed)
    expected = reference(logits, out_h, out_w, align_corners)
    labels = upsample_argmax(logits, out_h, out_w, torch.int64, align_corners)
    assert torch.equal(labels, expected)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    ("out_h", "out_w"), [(480, 640), (640, 480), (128, 128), (100, 90), (333, 517)]
)
@pytest.mark.parametrize("kind", ["smooth", "dominant", "integers", "noise", "noise-scored"])
def test_segformer_sized_logits(
    kind: str, out_h: int, out_w: int, align_corners: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SegFormer's 128x128 scores (and mmseg's 512x512 when downscaling) at label sizes;
    ``noise``: random weights' scores, close everywhere (most cells have several candidates),
    also with every undecided cell scored (never the upsampling of the classes in doubt)."""
    if kind == "noise-scored":
        kind = "noise"
        monkeypatch.setattr(bilinear_argmax, "REPLAY_COST", 0)
    in_size = 512 if out_h < 128 else 128  # (100, 90): downscaling
    logits = make_logits(kind, 30, in_size, in_size, seed=out_h)
    expected = reference(logits, out_h, out_w, align_corners)
    assert torch.equal(upsample_argmax(logits, out_h, out_w, torch.uint8, align_corners), expected)


def test_label_dtype_and_non_contiguous_input() -> None:
    logits = make_logits("smooth", 40, 20, 24, seed=3).permute(0, 2, 1)  # strided view
    expected = reference(logits.contiguous(), 70, 90, False)
    labels = upsample_argmax(logits, 70, 90, torch.uint8)
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), expected)


def test_non_finite_scores_follow_interpolate() -> None:
    logits = make_logits("normal", 6, 9, 9, seed=1)
    logits[2, 4, 4] = float("nan")
    logits[4, 0, 0] = float("inf")
    assert torch.equal(
        upsample_argmax(logits, 40, 50, torch.int64), reference(logits, 40, 50, False)
    )


def test_three_classes_in_doubt_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's CPU kernel rounds three channels on one thread its own way; upsampling
    three classes in doubt of many must keep the arithmetic of all of them."""
    monkeypatch.setattr(bilinear_argmax, "REPLAY_COST", 10**9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in range(3):
            logits = make_logits("normal", 8, 11, 13, seed)
            # Classes 0-2 one unit in the last place apart: the winner is decided by rounding.
            up = torch.rand(logits[0].shape, generator=torch.Generator().manual_seed(seed)) < 0.5
            logits[1] = torch.nextafter(logits[0], torch.where(up, torch.inf, -torch.inf))
            logits[2] = logits[0]
            logits[3:] -= 10  # and only they can win
            assert torch.equal(
                upsample_argmax(logits, 150, 170, torch.int64), reference(logits, 150, 170, False)
            )
    finally:
        torch.set_num_threads(threads)


def test_decided_cells_leave_few_pixels_in_doubt() -> None:
    """Where one class leads a cell by a margin, none of its pixels is scored."""
    logits = torch.full((10, 8, 8), -5.0)
    logits[[1, 7]] = 0.0
    logits[1, :, :4] = 5.0  # class 1 on the left half, class 7 on the right
    logits[7, :, 4:] = 5.0
    cells = CellAnalysis(logits, *contenders(logits))
    assert set(cells.decided[:, :3].unique().tolist()) == {1}
    assert set(cells.decided[:, 4:].unique().tolist()) == {7}
    assert (cells.decided[:, 3] == -1).all()  # the boundary column of cells
    assert candidate_classes(logits).tolist() == [1, 7]
    assert torch.equal(
        upsample_argmax(logits, 64, 64, torch.int64), reference(logits, 64, 64, False)
    )


def test_ties_are_replayed_in_the_kernels_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores a unit in the last place apart go through the fused replay, and still agree."""
    arithmetic = replayed_arithmetic("cpu")
    if arithmetic is None or not arithmetic.fused_blend:
        pytest.skip("this build's kernel does not fuse")
    calls: list[bool] = []
    original: Callable[..., torch.Tensor] = bilinear_replay.replay

    def spy(*args: Any, fused: bool) -> torch.Tensor:
        calls.append(fused)
        return original(*args, fused=fused)

    monkeypatch.setattr(bilinear_argmax, "replay", spy)
    monkeypatch.setattr(bilinear_argmax, "CELL_RATIO", 0)
    monkeypatch.setattr(bilinear_argmax, "REPLAY_COST", 0)
    logits = make_logits("ulp", 5, 16, 16, seed=0)
    assert torch.equal(
        upsample_argmax(logits, 200, 150, torch.int64), reference(logits, 200, 150, False)
    )
    assert True in calls


def test_the_kernels_rounding_is_known_on_this_cpu() -> None:
    """FMA builds (AVX2) and the default build are both replayed; another may fall back."""
    if torch.backends.cpu.get_cpu_capability() in {"AVX2", "DEFAULT"}:
        assert replayed_arithmetic("cpu") is not None
    assert bilinear_replay.replayed_arithmetic is replayed_arithmetic


@pytest.mark.parametrize(
    ("kind", "classes"), [("normal", 150), ("noise", 150), ("normal", 300), ("dominant", 300)]
)
def test_many_classes(kind: str, classes: int) -> None:
    """Random weights' scores keep most classes in the running (examined as all of them);
    past 255 classes the per-cell counts are no longer bytes. Both stay exact."""
    logits = make_logits(kind, classes, 24, 20, seed=classes)
    kept, bar = contenders(logits)
    cells = CellAnalysis(logits, kept, bar)
    assert torch.equal(cells.in_doubt(), candidate_classes(logits))
    assert bool((cells.count >= 1).all())
    for out_h, out_w in [(110, 97), (24, 20), (48, 40)]:
        expected = reference(logits, out_h, out_w, False)
        labels = upsample_argmax(logits, out_h, out_w, torch.int64)
        assert torch.equal(labels, expected), (kind, classes, out_h, out_w)
