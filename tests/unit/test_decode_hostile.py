"""Every hostile upload class gets its documented error; memory and time per decode are bounded."""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import pytest

from deployments.config import LimitsConfig
from deployments.pipeline.decode_pool import DecodePool
from deployments.pipeline.errors import (
    DecodeMemoryExceeded,
    DecodeTimeout,
    Overloaded,
    SegServeError,
)
from deployments.pipeline.imaging import (
    DEFAULT_FORMATS,
    ImageLimits,
    InputSpec,
    decode_image,
    probe_image,
)
from tests.hostile_images import CASES, HostileCase, png_rgba_100mp, progressive_scan_bomb
from tests.images import encode, jpeg, scene

SPEC = InputSpec(size=(64, 64))

LIMITS = LimitsConfig().image_limits()


def outcome(case: HostileCase, data: bytes) -> tuple[int, str | None]:
    limits = replace(LIMITS, formats=case.formats or DEFAULT_FORMATS)
    try:
        header = probe_image(data, limits)
        decoded = decode_image(data, SPEC, limits, header)
    except SegServeError as e:
        return e.kind.http_status, e.code
    assert (decoded.width, decoded.height) == case.size
    assert decoded.pixels.shape == (64, 64, 3)
    return 200, None


@pytest.mark.parametrize("case", [c for c in CASES if not c.heavy], ids=lambda c: c.name)
def test_hostile_input_gets_its_documented_answer(case: HostileCase) -> None:
    assert outcome(case, case.make()) == (case.status, case.code)


def test_orientation_turns_the_stored_left_half_to_the_displayed_top() -> None:
    case = next(c for c in CASES if c.name == "exif_orientation_6")
    decoded = decode_image(case.make(), InputSpec(size=(20, 60)), LIMITS)
    top, bottom = decoded.pixels[:25, :, 0].mean(), decoded.pixels[-25:, :, 0].mean()
    assert top > 200 and bottom < 60


def test_a_normal_progressive_jpeg_passes_the_scan_rules() -> None:
    data = encode(scene(300, 200), "JPEG", progressive=True, quality=90)
    header = probe_image(data, LIMITS)
    assert header.progressive and 2 <= header.scans <= 20
    assert decode_image(data, SPEC, LIMITS, header).pixels.shape == (64, 64, 3)


@pytest.mark.parametrize("fill", [0, 1, 4095, 4096, 4097, 70_000])
def test_fill_bytes_are_counted_exactly_up_to_the_limit(fill: int) -> None:
    limits = replace(LIMITS, jpeg_max_fill_bytes=4096)
    data = jpeg(64, 48)
    padded = data[:2] + b"\xff" * fill + data[2:]  # the run ends in APP0's own 0xFF
    if fill <= 4096:
        assert probe_image(padded, limits).display_size == (64, 48)
    else:
        with pytest.raises(SegServeError) as caught:
            probe_image(padded, limits)
        assert caught.value.code == "jpeg_fill_bytes"


def test_header_is_reused_and_reports_what_routing_needs() -> None:
    header = probe_image(jpeg(640, 480), LIMITS)
    assert (header.format, header.width, header.height, header.mode) == ("JPEG", 640, 480, "RGB")
    assert header.display_size == (640, 480) and header.frames == 1
    assert header.decode_bytes <= LIMITS.max_decode_bytes


def test_decode_memory_bound_refuses_before_decoding() -> None:
    limits = replace(LIMITS, max_decode_bytes=100 * 1024 * 1024)
    with pytest.raises(DecodeMemoryExceeded):
        probe_image(png_rgba_100mp(), limits)


def _peak_rss_of_decode(data: bytes, limits: ImageLimits) -> tuple[int, int]:
    """In a fresh process: (bytes the decode added to peak RSS, the header's estimate)."""
    decode_image(jpeg(32, 32), SPEC, limits)  # libraries loaded before the baseline
    with open("/proc/self/statm") as statm:
        before = int(statm.read().split()[1]) * resource.getpagesize()
    header = probe_image(data, limits)
    decode_image(data, SPEC, limits, header)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak - before, header.decode_bytes


@pytest.mark.parametrize("name", ["png_16bit_100mp", "tiff_float_100mp", "png_rgba_100mp"])
def test_peak_memory_of_a_100_megapixel_decode_stays_within_its_bound(name: str) -> None:
    data = next(c for c in CASES if c.name == name).make()
    limits = LIMITS
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        added, estimate = pool.apply(_peak_rss_of_decode, (data, limits))
    assert estimate <= limits.max_decode_bytes
    assert 0 < added <= estimate


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_pool_decodes_like_the_in_process_path() -> None:
    data = jpeg(400, 300)
    expected = decode_image(data, SPEC, LIMITS).pixels

    async def go() -> np.ndarray:
        with DecodePool(workers=1, queue=0, timeout_s=60) as pool:
            header = await pool.probe(data, LIMITS)
            return (await pool.decode(data, SPEC, LIMITS, header)).pixels

    pixels = run(go())
    assert np.array_equal(pixels, expected) and pixels.flags.writeable


def test_pool_kills_a_decode_past_its_deadline_and_keeps_serving() -> None:
    # Scan rules lifted so the bomb reaches the decoder: it decodes for a minute or more.
    lax = replace(LIMITS, jpeg_max_scans=10**6, jpeg_max_markers=10**6, jpeg_max_scan_pixels=10**15)
    bomb = progressive_scan_bomb(repeats=2000, side=4096)

    async def go() -> None:
        with DecodePool(workers=1, queue=0, timeout_s=1.0) as pool:
            with pytest.raises(DecodeTimeout):
                await pool.decode(bomb, SPEC, lax)
            decoded = await pool.decode(jpeg(100, 100), SPEC, LIMITS)
            assert decoded.pixels.shape == (64, 64, 3)

    run(go())


@pytest.mark.parametrize("workers", [0, 1])
def test_a_full_pool_answers_overloaded_at_once(workers: int) -> None:
    data = jpeg(64, 64)

    async def go() -> list[object]:
        with DecodePool(workers=workers, queue=1, timeout_s=60) as pool:
            calls = [pool.decode(data, SPEC, LIMITS) for _ in range(5)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = run(go())
    assert sum(isinstance(r, Overloaded) for r in results) == 3
    assert all(not isinstance(r, BaseException) or isinstance(r, Overloaded) for r in results)


def test_bodies_no_accepted_opener_recognises_are_refused_without_a_worker() -> None:
    """Junk, empty and oversized bodies are answered from their length and first bytes:
    the same 415/400/413 as the worker's header probe, even with every worker gone."""
    junk = bytes(range(256)) * 64
    small = replace(LIMITS, max_bytes=1000)
    # What the worker's own probe answers, for comparison.
    expected = []
    for data, limits in ((junk, LIMITS), (b"", LIMITS), (jpeg(64, 64), small)):
        with pytest.raises(SegServeError) as caught:
            probe_image(data, limits)
        expected.append((caught.value.code, caught.value.message))

    async def go() -> list[tuple[str, str]]:
        pool = DecodePool(workers=1, queue=0, timeout_s=60)
        pool.close()  # no worker at all: a decode would get 503 decode_pool_closed
        answers = []
        for data, limits in ((junk, LIMITS), (b"", LIMITS), (jpeg(64, 64), small)):
            with pytest.raises(SegServeError) as caught:
                await pool.probe(data, limits)
            answers.append((caught.value.code, caught.value.message))
        return answers

    answers = run(go())
    assert answers == expected
    assert [code for code, _ in answers] == ["unsupported_image", "empty_body", "payload_too_large"]
