"""Contours and overlay of a 6000x4000 photo stay within a memory bound.

The gateway holds a bounded label map (627x418 for the tiny model's default
``label_max_pixels``) and decodes the photo a second time only at the overlay's
size, in JPEG draft mode; neither output ever makes a full-size array. Measured
with tracemalloc (numpy's and OpenCV's buffers are traced) over the whole
request in-process; a full-size label PNG, asked for on purpose, shows the
measurement sees arrays of that size.
"""

from __future__ import annotations

import asyncio
import io
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from deployments.config import GatewayConfig, LimitsConfig
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.imaging import fit_within
from deployments.pipeline.options import SegmentOptions
from deployments.pipeline.service import SegmentationService
from deployments.protocols.wire import SegmentResult

WIDTH, HEIGHT = 6000, 4000
# Pillow's pixel limit is one global that each decode sets from its service's limits;
# after the other transport services' 12 MP, service.peek_size warns once on this photo.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
#: One full-size label map (uint8); an RGB photo at full size is three times this.
FULL_LABELS = WIDTH * HEIGHT


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    coarse.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(cores: dict[str, ModelCore]) -> SegmentationService:
    limits = LimitsConfig(max_request_bytes=64 << 20, max_image_pixels=100_000_000)
    gateway = GatewayConfig(default_model="tiny", limits=limits)
    core = cores["tiny"]
    return SegmentationService({"tiny": LocalEndpoint(core)}, [core.config], gateway)


def traced_peak(run: Callable[[], SegmentResult]) -> tuple[SegmentResult, int]:
    tracemalloc.start()
    try:
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_contours_of_a_6000x4000_photo_never_make_a_full_size_map(
    service: SegmentationService, big_jpeg: bytes
) -> None:
    options = SegmentOptions(outputs=frozenset({"contours"}))
    asyncio.run(service.segment(big_jpeg, options))  # warm: lazy imports, caches
    result, peak = traced_peak(lambda: asyncio.run(service.segment(big_jpeg, options)))
    assert (result.width, result.height) == (WIDTH, HEIGHT) and result.contours
    assert peak < FULL_LABELS / 2, f"peak {peak / 2**20:.1f} MiB"


def test_the_overlay_of_a_6000x4000_photo_is_bounded_by_its_configured_size(
    service: SegmentationService, big_jpeg: bytes
) -> None:
    options = SegmentOptions(outputs=frozenset({"overlay"}))
    asyncio.run(service.segment(big_jpeg, options))
    result, peak = traced_peak(lambda: asyncio.run(service.segment(big_jpeg, options)))
    max_pixels = service.config.outputs.overlay_max_pixels
    out_w, out_h = fit_within(WIDTH, HEIGHT, max_pixels)
    assert result.overlay is not None
    assert (result.overlay.width, result.overlay.height) == (out_w, out_h)
    # The photo and the picture at the overlay's size, their blend temporaries and a
    # fixed allowance for the label map and the decode: never the full-size photo.
    bound = 3 * (3 * out_w * out_h) + (8 << 20)
    assert peak < bound < 3 * FULL_LABELS / 2, f"peak {peak / 2**20:.1f} MiB"


def test_the_overlay_photo_is_decoded_near_the_overlay_size(
    service: SegmentationService, big_jpeg: bytes
) -> None:
    from deployments.pipeline.imaging import InputSpec, decode_image

    first = decode_image(big_jpeg, InputSpec(size=(128, 128)), service.limits)
    photo = service.encoder.overlay_photo(big_jpeg, first)
    out_w, out_h = fit_within(WIDTH, HEIGHT, service.config.outputs.overlay_max_pixels)
    assert photo.processed_size == (out_w, out_h)
    # JPEG draft mode: 1/2 scale is the smallest that still covers 1732x1154.
    assert photo.decoded_size == (WIDTH // 2, HEIGHT // 2)


def test_the_measurement_sees_a_full_size_array(
    service: SegmentationService, big_jpeg: bytes
) -> None:
    options = SegmentOptions(outputs=frozenset({"mask"}), mask_size="original")
    _, peak = traced_peak(lambda: asyncio.run(service.segment(big_jpeg, options)))
    assert peak >= FULL_LABELS
