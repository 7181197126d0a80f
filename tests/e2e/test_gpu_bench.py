"""``python -m benchmarks.gpu --device cpu``: the prepared GPU check runs here, end to end.

The GPU machine has minutes, no Ray and no network, so the script must not fail
there for a reason a CPU run could have shown: this runs it as a subprocess (its
own interpreter, Ray made unimportable by the script itself) and checks the JSON's
shape and the figures that do not depend on speed. An e2e test: it is a whole
program run as a subprocess and takes about a minute on two cores (the unit tier
stays fast); it needs no server and no Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("throughput", "precision", "per_image", "photo", "mmseg", "memory", "ray")


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--budget-s", "3600"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_every_section_is_there_and_none_failed(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "gpu" and report["weights"] == "random"
    assert report["environment"]["device"] == "cpu"
    for name in SECTIONS:
        assert "error" not in report[name], (name, report[name])
        if name != "mmseg":  # skipped on CPU, with the reason (below)
            assert "skipped" not in report[name], (name, report[name])
    for name in ("throughput", "precision", "per_image", "photo"):
        assert report[name]["weights"] == "random"


def test_ray_was_never_imported(report: dict[str, Any]) -> None:
    assert report["ray"] == {
        "blocked": True,
        "imported": False,
        "modules": [],
        "already_loaded_at_start": [],
    }


def test_the_batcher_batched_and_every_request_was_answered(report: dict[str, Any]) -> None:
    figures = report["throughput"]
    profile = report["profile"]
    assert figures["batch1"]["requests"] == profile["single_requests"]
    assert figures["batch1"]["mean_batch_size"] == 1
    closed = figures["batched_closed_loop"]
    assert closed["requests"] == profile["closed_max_requests"] and closed["clients"] == 32
    assert closed["mean_batch_size"] > 1  # 32 clients at once: batches, not one at a time
    assert figures["batched_open_loop_at_4x"]["requests"] == profile["open_max_requests"]
    assert figures["throughput_ratio"] > 0


def test_label_agreement_is_a_share_of_pixels_of_real_maps(report: dict[str, Any]) -> None:
    figures = report["precision"]
    assert figures["forced_cpu_autocast"] is True
    assert figures["classes_in_fp32_maps"] > 1  # not a constant map that agrees trivially
    for name, ran_as in (("bf16", "bfloat16"), ("fp16", "float16")):
        assert figures[name]["ran_as"] == ran_as
        assert 0.9 <= figures[name]["worst_image"] <= figures[name]["agreement"] <= 1.0


def test_the_photo_went_through_the_pipeline_at_its_size(report: dict[str, Any]) -> None:
    size = report["profile"]["size"]
    for variant in ("segformer-b0", "segformer-b2"):
        figures = report["photo"][variant]
        assert figures["photo"] == [6000, 4000] and figures["mask_size"] == [6000, 4000]
        assert figures["processed"] == [size, size]
        assert figures["answered_weights"] == "pretrained"  # loaded from the saved directory
        assert figures["classes"] >= 1 and figures["wall"]["n"] >= 1
        assert set(figures["timings_ms"]) == {"decode", "queue", "inference", "encode", "total"}
    for variant in ("segformer-b0", "segformer-b2"):
        assert report["per_image"][variant]["batch1"]["n"] == report["profile"]["per_image_iters"]


def test_cuda_only_figures_are_null_with_a_reason(report: dict[str, Any]) -> None:
    assert report["memory"]["peak_gpu_memory_gb"] is None and report["memory"]["reason"]
    goals = report["goals_met"]
    assert goals["throughput_4x"] is None and goals["peak_gpu_memory"] is None
    assert goals["reason"]
    mmseg = report["mmseg"]
    assert isinstance(mmseg["skipped"], str) and mmseg["skipped"]
