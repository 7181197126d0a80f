"""Decode, validation, orientation, downscaling and label-map resizing."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deployments.config import LimitsConfig
from deployments.pipeline.errors import (
    CorruptImage,
    ImageTooLarge,
    MalformedRequest,
    PayloadTooLarge,
    UnsupportedImage,
)
from deployments.pipeline.imaging import (
    ImageLimits,
    InputSpec,
    class_pixel_counts,
    decode_image,
    fit_within,
    resize_labels,
    to_rgb,
)
from tests.images import encode, jpeg, png_bomb, scene

SPEC = InputSpec(size=(64, 64))
LIMITS = LimitsConfig().image_limits()


def solid(mode: str, colour: object, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new(mode, size, colour)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("GIF", {}),
    ],
)
def test_every_accepted_format_decodes_to_rgb_at_the_model_size(
    fmt: str, params: dict[str, Any]
) -> None:
    data = encode(solid("RGB", (200, 40, 40), (50, 30)), fmt, **params)
    decoded = decode_image(data, SPEC, LIMITS)
    assert (decoded.width, decoded.height) == (50, 30)
    assert decoded.pixels.shape == (64, 64, 3)
    assert decoded.pixels.dtype == np.uint8
    red, green, blue = decoded.pixels.reshape(-1, 3).mean(axis=0)
    assert red > 150 and green < 90 and blue < 90


def test_gif_uses_the_first_frame() -> None:
    frames = [solid("RGB", (255, 0, 0)), solid("RGB", (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    pixels = decode_image(buffer.getvalue(), SPEC, LIMITS).pixels
    assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 50


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (solid("L", 100), (100, 100, 100)),
        (solid("LA", (100, 0)), (255, 255, 255)),  # fully transparent -> white background
        (solid("LA", (100, 255)), (100, 100, 100)),
        (solid("RGBA", (10, 20, 30, 255)), (10, 20, 30)),
        (solid("RGBA", (10, 20, 30, 0)), (255, 255, 255)),
        (solid("RGBA", (0, 0, 0, 128)), (127, 127, 127)),
        (solid("CMYK", (0, 255, 255, 0)), (255, 0, 0)),
        (solid("I;16", 0xFFFF), (255, 255, 255)),
        (solid("I;16", 0x8000), (128, 128, 128)),
        (solid("I", 0x4000), (64, 64, 64)),
        (solid("F", 0.5), (128, 128, 128)),
        (solid("1", 1), (255, 255, 255)),
    ],
    ids=lambda v: v.mode if isinstance(v, Image.Image) else str(v),
)
def test_modes_convert_to_the_rgb_a_person_would_see(
    image: Image.Image, expected: tuple[int, int, int]
) -> None:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert np.abs(np.asarray(rgb).astype(int) - expected).max() <= 1


def test_palette_with_transparency_is_composited() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (0, 0, 10, 20))
    image.info["transparency"] = 1
    pixels = np.asarray(to_rgb(image))
    assert tuple(pixels[5, 5]) == (255, 255, 255)  # transparent half -> white
    assert tuple(pixels[5, 15]) == (255, 0, 0)


def test_sixteen_bit_png_keeps_its_range_through_decode() -> None:
    gradient = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    data = encode(Image.fromarray(gradient), "PNG")
    pixels = decode_image(data, InputSpec(size=(64, 64)), LIMITS).pixels
    assert pixels.min() <= 1 and pixels.max() >= 254


def exif_jpeg(orientation: int, width: int = 60, height: int = 20) -> bytes:
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (255, 0, 0)  # left half red as stored
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif, quality=95)


def test_exif_orientation_is_applied() -> None:
    # Orientation 6: the stored image is displayed rotated 90 degrees clockwise.
    decoded = decode_image(exif_jpeg(6), InputSpec(size=(20, 60)), LIMITS)
    assert (decoded.width, decoded.height) == (20, 60)
    pixels = decoded.pixels.astype(int)
    top, bottom = pixels[:25].mean(axis=(0, 1)), pixels[-25:].mean(axis=(0, 1))
    assert top[0] > 200 and bottom[0] < 60  # stored left half is now on top


def test_orientation_1_and_missing_exif_leave_the_image_alone() -> None:
    decoded = decode_image(exif_jpeg(1), InputSpec(size=(60, 20)), LIMITS)
    assert (decoded.width, decoded.height) == (60, 20)
    assert decoded.pixels[:, :25, 0].mean() > 200


def test_large_jpeg_is_decoded_in_draft_mode_no_bigger_than_needed() -> None:
    data = jpeg(4000, 3000)
    decoded = decode_image(data, InputSpec(size=(512, 512)), LIMITS)
    assert (decoded.width, decoded.height) == (4000, 3000)
    # 1/4 scale (1000x750) still covers 512x512; 1/8 would not.
    assert decoded.decoded_size == (1000, 750)
    assert decoded.processed_size == (512, 512)


def test_keep_ratio_spec_fits_inside_scale() -> None:
    spec = InputSpec(scale=(2048, 512))
    assert spec.target_size(4000, 3000) == (683, 512)
    assert spec.target_size(300, 100) == (1536, 512)  # upscales, as MMSegmentation does
    assert spec.target_size(100, 5000) == (41, 2048)


def test_empty_body_is_malformed() -> None:
    with pytest.raises(MalformedRequest, match="empty"):
        decode_image(b"", SPEC, LIMITS)


def test_text_is_not_an_image() -> None:
    with pytest.raises(UnsupportedImage):
        decode_image(b"hello, this is not an image" * 10, SPEC, LIMITS)


def test_truncated_jpeg_is_corrupt() -> None:
    data = jpeg(300, 200)
    with pytest.raises(CorruptImage):
        decode_image(data[: len(data) // 2], SPEC, LIMITS)


def test_png_bomb_is_rejected_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(png_bomb(), SPEC, LIMITS)


def test_byte_limit() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(jpeg(200, 200), SPEC, replace(LIMITS, max_bytes=1000))


def test_pixel_limit_is_configurable() -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(jpeg(200, 200), SPEC, replace(LIMITS, max_pixels=200 * 199))


def test_formats_outside_the_allowed_set_are_unsupported() -> None:
    data = encode(scene(20, 20), "BMP")
    with pytest.raises(UnsupportedImage):
        decode_image(data, SPEC, replace(LIMITS, formats=frozenset({"JPEG", "PNG"})))


@pytest.mark.parametrize("cut", [8, 20, 40, 100])
def test_damaged_headers_never_escape_as_unexpected_errors(cut: int) -> None:
    for data in (encode(scene(30, 30), "PNG"), encode(scene(30, 30), "WEBP"), jpeg(30, 30)):
        with pytest.raises((CorruptImage, UnsupportedImage)):
            decode_image(data[:cut], SPEC, LIMITS)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_arbitrary_bytes_only_raise_client_errors(data: bytes) -> None:
    # Any outcome but a client error (an unexpected exception type) fails the test.
    with contextlib.suppress(CorruptImage, UnsupportedImage, ImageTooLarge):
        decode_image(b"\x89PNG\r\n\x1a\n" + data, SPEC, LIMITS)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 300), st.integers(1, 300), st.data())
def test_class_counts_equal_those_of_the_resized_mask(
    src_w: int, src_h: int, width: int, height: int, data: st.DataObject
) -> None:
    seed = data.draw(st.integers(0, 2**16))
    labels = np.random.default_rng(seed).integers(0, 6, (src_h, src_w)).astype(np.uint8)
    resized = resize_labels(labels, width, height)
    assert resized.shape == (height, width)
    assert set(np.unique(resized)) <= set(np.unique(labels))
    expected = np.bincount(resized.ravel(), minlength=6)
    assert np.array_equal(class_pixel_counts(labels, width, height, 6)[:6], expected)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20000), st.integers(1, 20000), st.integers(1024, 4_000_000))
def test_fit_within_bounds_pixels_and_keeps_aspect(width: int, height: int, budget: int) -> None:
    w, h = fit_within(width, height, budget)
    assert w <= width and h <= height
    if width * height <= budget:
        assert (w, h) == (width, height)
    else:
        assert w * h <= budget
        assert w * h >= budget / 4 or min(w, h) == 1  # not needlessly small


def test_upscaled_labels_stay_blocky() -> None:
    labels = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    assert resize_labels(labels, 4, 4).tolist() == [
        [1, 1, 2, 2],
        [1, 1, 2, 2],
        [3, 3, 4, 4],
        [3, 3, 4, 4],
    ]


def test_every_decode_bound_comes_from_the_config() -> None:
    """deployments/config/ holds every default: ImageLimits has none, and LimitsConfig sets each
    field from its own (a changed config value reaches the decode path)."""
    import dataclasses

    fields = dataclasses.fields(ImageLimits)
    assert all(f.default is dataclasses.MISSING for f in fields)
    with pytest.raises(TypeError):
        ImageLimits()  # type: ignore[call-arg]
    config = LimitsConfig(jpeg_max_scans=7, max_decode_bytes=123 << 20, bmp_max_rle_pixels=99)
    limits = config.image_limits()
    assert (limits.jpeg_max_scans, limits.max_decode_bytes, limits.bmp_max_rle_pixels) == (
        7, 123 << 20, 99,
    )  # fmt: skip
    shared = (set(LimitsConfig.model_fields) & {f.name for f in fields}) - {"formats"}
    assert all(getattr(limits, name) == getattr(config, name) for name in shared)
    assert len(shared) == len(fields) - 3  # max_bytes and max_pixels are renamed
    assert limits.formats == frozenset(f.upper() for f in config.formats)
