"""Mutated real files through probe + decode: success or a documented 4xx, nothing else."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deployments.config import LimitsConfig
from deployments.pipeline.errors import ErrorKind, SegServeError
from deployments.pipeline.imaging import InputSpec, decode_image, probe_image
from deployments.pipeline.probe import PREFIX_CHECK_BYTES, ImageLimits, refuse_prefix
from tests.hostile_images import (
    jpeg_fill_bytes,
    png_chunk,
    png_many_empty_chunks,
    progressive_scan_bomb,
)
from tests.images import encode, scene

SPEC = InputSpec(size=(32, 32))
LIMITS = LimitsConfig().image_limits()
CLIENT_KINDS = {ErrorKind.MALFORMED, ErrorKind.TOO_LARGE, ErrorKind.UNSUPPORTED_MEDIA}


def _gif() -> bytes:
    frames = [Image.fromarray(scene(24, 16, seed)) for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


SEEDS = [
    encode(scene(24, 16), "JPEG", quality=80),
    encode(scene(24, 16), "JPEG", quality=80, progressive=True),
    encode(scene(24, 16), "PNG"),
    encode(Image.new("I;16", (24, 16), 40000), "PNG"),
    encode(scene(24, 16), "WEBP"),
    encode(scene(24, 16), "BMP"),
    encode(scene(24, 16), "GIF"),
    encode(scene(24, 16), "TIFF", compression="tiff_deflate"),
    encode(Image.new("F", (24, 16), 0.5), "TIFF"),
    _gif(),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "truncate", "header", "chunk"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif action == "truncate":
            del data[max(1, at) :]
        elif action == "header":  # sizes, counts and lengths live in the first bytes
            spot = draw(st.integers(0, min(len(data), 64) - 1))
            data[spot : spot + 2] = draw(st.binary(min_size=2, max_size=2))
        else:
            kind = draw(st.sampled_from([b"IDAT", b"iCCP", b"tEXt", b"eXIf", b"acTL", b"zzZz"]))
            data[at:at] = png_chunk(kind, draw(st.binary(max_size=32)))
    return bytes(data)


@pytest.mark.timeout(120)  # a guard against hangs only; how fast is the benchmark's job
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_files_succeed_or_get_a_documented_client_error(data: bytes) -> None:
    try:
        header = probe_image(data, LIMITS)
        decoded = decode_image(data, SPEC, LIMITS, header)
    except SegServeError as e:
        kind = e.kind
    else:
        assert decoded.pixels.shape == (32, 32, 3)
        return
    assert kind in CLIENT_KINDS


def _code(check: Callable[[], object]) -> str | None:
    try:
        check()
    except SegServeError as e:
        return e.code
    return None


# Tight structural bounds, so that mutated small files do break rules within a prefix.
STRICT = replace(
    LIMITS,
    jpeg_max_fill_bytes=8,
    jpeg_max_markers=12,
    jpeg_max_scans=3,
    png_max_chunks_before_idat=4,
    jpeg_max_header_bytes=1024,
)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.integers(0, 4096), st.sampled_from([LIMITS, STRICT]))
def test_a_refused_prefix_is_a_body_the_whole_check_refuses_alike(
    data: bytes, cut: int, limits: ImageLimits
) -> None:
    # The gateway judges an HTTP body by its first bytes as they arrive and answers
    # without the rest: that answer must be the one the whole body would get.
    early = _code(lambda: refuse_prefix(data[:cut], limits))
    if early is not None:
        assert early == _code(lambda: probe_image(data, limits))


@pytest.mark.parametrize(
    "data",
    [
        jpeg_fill_bytes(),
        png_many_empty_chunks(),
        progressive_scan_bomb(),
        b"\x00junk, not an image" * 1000,
    ],
    ids=["jpeg_fill_bytes", "png_many_empty_chunks", "progressive_scan_bomb", "junk"],
)
def test_header_bombs_are_refused_from_their_first_64_kb(data: bytes) -> None:
    expected = _code(lambda: probe_image(data, LIMITS))
    assert expected is not None
    assert _code(lambda: refuse_prefix(data[:PREFIX_CHECK_BYTES], LIMITS)) == expected


@pytest.mark.parametrize("seed", SEEDS, ids=lambda d: d[:4].hex())
def test_good_files_pass_every_prefix(seed: bytes) -> None:
    for cut in range(len(seed) + 1):
        refuse_prefix(seed[:cut], LIMITS)
