"""The transport-free service and the model core, in-process (no Ray)."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import numpy as np
import pytest

from deployments.adapters.device import plan_device
from deployments.config import BatchingConfig, ModelConfig
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.errors import DeadlineExceeded, UnknownModel
from deployments.pipeline.imaging import ImageLimits
from deployments.pipeline.options import parse_options
from deployments.pipeline.outputs import decode_label_png
from deployments.pipeline.service import PredictRequest, SegmentationService
from tests.images import jpeg, scene


@pytest.fixture(scope="module")
def core(tiny_segformer_dir: Path) -> ModelCore:
    config = ModelConfig(
        name="tiny",
        framework="hf_segformer",
        source=str(tiny_segformer_dir),
        weights="pretrained",
        batching=BatchingConfig(max_batch_size=4, max_batch_pixels=3 * 128 * 128),
    )
    return ModelCore(config, plan_device(0, 2, None))


@pytest.fixture(scope="module")
def service(core: ModelCore) -> SegmentationService:
    return SegmentationService({"tiny": LocalEndpoint(core)}, "tiny", ImageLimits())


def test_a_6000x4000_photo_gets_a_6000x4000_mask_from_a_bounded_model_input(
    service: SegmentationService, core: ModelCore
) -> None:
    result = asyncio.run(service.segment(jpeg(6000, 4000), parse_options()))
    assert (result.width, result.height) == (6000, 4000)
    assert result.processed == (128, 128)
    assert result.mask_size == (6000, 4000)
    assert result.mask_png is not None and result.classes is not None
    mask = decode_label_png(result.mask_png)
    assert mask.shape == (4000, 6000)
    assert sum(row.pixels for row in result.classes) == 6000 * 4000
    counts = np.bincount(mask.ravel(), minlength=150)
    assert {row.id: row.pixels for row in result.classes} == {
        int(i): int(counts[i]) for i in np.flatnonzero(counts)
    }
    # The replica saw the model's input size, never the upload's.
    assert core.stats["largest_input_pixels"] == 128 * 128
    body = result.to_json()
    assert body["weights"] == "pretrained" and "warning" not in body
    assert base64.b64decode(body["mask"]["data"]) == result.mask_png
    assert set(body["timings_ms"]) == {"decode", "queue", "inference", "encode", "total"}


def test_mask_size_model_and_outputs(service: SegmentationService) -> None:
    options = parse_options(mask_size="model", outputs="mask")
    result = asyncio.run(service.segment(jpeg(2000, 1000), options))
    assert result.classes is None and result.mask_png is not None
    width, height = result.mask_size
    assert width * height <= 512 * 512 and abs(width / height - 2) < 0.01
    assert decode_label_png(result.mask_png).shape == (height, width)
    classes_only = asyncio.run(service.segment(jpeg(50, 40), parse_options(outputs="classes")))
    assert classes_only.mask_png is None and classes_only.classes


def test_unknown_model_is_404_before_any_decoding(service: SegmentationService) -> None:
    with pytest.raises(UnknownModel, match="tiny"):
        asyncio.run(service.segment(b"not even an image", parse_options(model="b7")))


def test_expired_requests_are_answered_without_running(core: ModelCore) -> None:
    before = dict(core.stats)
    expired = PredictRequest(scene(128, 128), (10, 10), deadline=time.time() - 0.01)
    live = PredictRequest(scene(128, 128), (10, 10), deadline=time.time() + 60)
    late, done = core.run_batch([expired, live])
    assert isinstance(late, DeadlineExceeded) and late.kind.http_status == 504
    assert not isinstance(done, Exception) and done.batch_size == 1
    assert core.stats["expired"] == before["expired"] + 1
    assert core.stats["requests"] == before["requests"] + 1


def test_a_tiny_budget_is_a_deadline_error(service: SegmentationService) -> None:
    with pytest.raises(DeadlineExceeded):
        asyncio.run(service.segment(jpeg(3000, 2000), parse_options(budget_ms="0.5")))


def test_batch_cost_bounds_count_and_pixels(core: ModelCore) -> None:
    small = PredictRequest(scene(64, 64), (8, 8))
    model_size = PredictRequest(scene(128, 128), (8, 8))
    huge = PredictRequest(scene(400, 400), (8, 8))
    assert core.batch_cost(small) == 1  # the count limit: 4 per batch
    assert core.batch_cost(model_size) == 2  # pixel budget 3x128x128 over 4 slots
    assert core.batch_cost(huge) == 4  # alone in its batch, never rejected
