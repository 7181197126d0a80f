"""Overlay encoder and palettes: the blend formula, sizes, legend, memory."""

from __future__ import annotations

import io
import tracemalloc

import cv2
import numpy as np
import pytest
from PIL import Image

from deployments.pipeline.imaging import fit_within, resize_labels
from deployments.pipeline.overlay import blend_labels, legend_entries, overlay_image
from deployments.pipeline.palette import (
    ADE20K_PALETTE,
    CITYSCAPES_PALETTE,
    generated_palette,
    resolve_palette,
)

NAMES = ["sky", "tree", "road", "car"]


def scene(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = np.zeros((max(1, height // 4), max(1, width // 4)), np.uint8)
    labels[labels.shape[0] // 2 :, :] = 2
    labels[: labels.shape[0] // 3, labels.shape[1] // 2 :] = 1
    labels[-2:, :2] = 3
    return photo, labels


def expected_blend(
    photo: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float
) -> np.ndarray:
    big = resize_labels(labels, photo.shape[1], photo.shape[0])
    weight = round(alpha * 256)
    total = photo.astype(np.int64) * (256 - weight) + palette[big].astype(np.int64) * weight + 128
    blended: np.ndarray = (total >> 8).astype(np.uint8)
    return blended


def decode(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        return str(image.format), np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_blend_equals_the_formula(alpha: float) -> None:
    photo, labels = scene(301, 203)  # odd sizes: labels resized by a non-integer factor
    palette = resolve_palette(len(NAMES))
    out = blend_labels(photo, labels, palette, alpha)
    assert np.array_equal(out, expected_blend(photo, labels, palette, alpha))
    colours = palette[resize_labels(labels, 301, 203)].astype(np.float64)
    exact = (1 - alpha) * photo + alpha * colours
    assert np.abs(out - exact).max() <= 1.0
    if alpha == 0.0:
        assert np.array_equal(out, photo)
    if alpha == 1.0:
        assert np.array_equal(out, colours.astype(np.uint8))


def test_blend_of_ids_above_255_and_in_place() -> None:
    photo, labels = scene(64, 48)
    wide = labels.astype(np.uint16) * 200  # ids 0, 200, 400, 600
    palette = generated_palette(601)
    expected = expected_blend(photo, wide, palette, 0.4)
    assert np.array_equal(blend_labels(photo, wide, palette, 0.4), expected)
    copy = photo.copy()
    blend_labels(copy, labels, palette, 0.4, out=copy)
    assert np.array_equal(copy, expected_blend(photo, labels, palette, 0.4))


def test_png_overlay_is_the_blend_at_the_original_size() -> None:
    photo, labels = scene(120, 90)
    palette = resolve_palette(len(NAMES), dataset="ade20k")
    data = overlay_image(photo, labels, palette, alpha=0.5, fmt="png", max_pixels=10**6)
    image_format, pixels = decode(data)
    assert image_format == "PNG"
    assert np.array_equal(pixels, expected_blend(photo, labels, palette, 0.5))


def test_overlay_is_scaled_down_to_max_pixels() -> None:
    photo, labels = scene(400, 300)
    palette = resolve_palette(len(NAMES))
    data = overlay_image(
        photo, labels, palette, alpha=0.5, fmt="png", max_pixels=30_000, size=(4000, 3000)
    )
    _, pixels = decode(data)
    assert (pixels.shape[1], pixels.shape[0]) == fit_within(4000, 3000, 30_000) == (200, 150)
    # The photo area-averaged to that size, the labels resized to it, blended.
    small = cv2.resize(photo, (200, 150), interpolation=cv2.INTER_AREA)
    assert np.array_equal(pixels, expected_blend(small, labels, palette, 0.5))


def test_jpeg_overlay() -> None:
    ramp = np.linspace(0, 255, 160 * 120 * 3).reshape(120, 160, 3).astype(np.uint8)
    labels = np.zeros((30, 40), np.uint8)
    labels[15:, :] = 1
    palette = resolve_palette(2)
    data = overlay_image(ramp, labels, palette, alpha=0.6, fmt="JPEG", max_pixels=10**6)
    image_format, pixels = decode(data)
    assert image_format == "JPEG"
    expected = expected_blend(ramp, labels, palette, 0.6)
    assert np.abs(pixels.astype(int) - expected).mean() < 3  # JPEG's loss only


def test_legend_is_drawn_in_the_corner_and_nowhere_else() -> None:
    photo, labels = scene(400, 300)
    palette = resolve_palette(len(NAMES), dataset="ade20k")
    plain = decode(overlay_image(photo, labels, palette, alpha=0.5, fmt="png", max_pixels=10**6))
    legend = decode(
        overlay_image(
            photo, labels, palette, alpha=0.5, fmt="png", max_pixels=10**6, legend_names=NAMES
        )
    )
    changed = np.any(plain[1] != legend[1], axis=2)
    assert changed.sum() > 500
    rows, cols = np.nonzero(changed)
    assert rows.max() < 150 and cols.max() < 200  # the top-left corner only
    # The legend shows each class present, with its palette colour.
    assert [name for name, _ in legend_entries(labels, palette, NAMES)] == [
        "road",
        "sky",
        "tree",
        "car",
    ]
    swatches = {tuple(map(int, c)) for c in legend[1][changed]}
    for _, colour in legend_entries(labels, palette, NAMES):
        assert colour in swatches


def test_many_classes_are_summed_up_in_the_legend() -> None:
    photo = np.zeros((60, 80, 3), np.uint8)
    labels = np.arange(60 * 80, dtype=np.uint16).reshape(60, 80) % 300
    data = overlay_image(
        photo,
        labels,
        generated_palette(300),
        alpha=0.5,
        fmt="png",
        max_pixels=10**6,
        legend_names=[f"c{i}" for i in range(300)],
    )
    assert decode(data)[1].shape == (60, 80, 3)


def test_overlay_of_a_huge_photo_stays_within_its_output_size() -> None:
    # The photo as the gateway hands it (decoded near the overlay's size), a
    # 6000x4000 original, overlays capped at 2 megapixels.
    out_w, out_h = fit_within(6000, 4000, 2_000_000)
    photo = np.random.default_rng(0).integers(0, 256, (out_h, out_w, 3), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 150, (418, 627)).astype(np.uint8)
    palette = resolve_palette(150, dataset="ade20k")
    tracemalloc.start()
    try:
        data = overlay_image(
            photo, labels, palette, alpha=0.5, fmt="jpeg", max_pixels=2_000_000,
            size=(6000, 4000), legend_names=["x"] * 150,
        )  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decode(data)[1].shape == (out_h, out_w, 3)
    # The output buffer (6 MB) plus row blocks and the JPEG; a float copy would be 48 MB.
    assert peak < 3 * out_w * out_h * 3


def test_bad_arguments_are_refused() -> None:
    photo, labels = scene(8, 8)
    palette = resolve_palette(4)
    with pytest.raises(ValueError, match="format"):
        overlay_image(photo, labels, palette, alpha=0.5, fmt="gif", max_pixels=100)
    with pytest.raises(ValueError, match="alpha"):
        overlay_image(photo, labels, palette, alpha=1.5, fmt="png", max_pixels=100)


def test_dataset_palettes_are_the_standard_ones() -> None:
    assert len(ADE20K_PALETTE) == 150 and len(CITYSCAPES_PALETTE) == 19
    ade = resolve_palette(150, dataset="ade20k")
    assert ade[0].tolist() == [120, 120, 120] and ade[2].tolist() == [6, 230, 230]  # wall, sky
    cityscapes = resolve_palette(19, dataset="cityscapes")
    assert cityscapes[0].tolist() == [128, 64, 128]  # road
    assert cityscapes[13].tolist() == [0, 0, 142]  # car


def test_model_palette_wins_and_short_palettes_are_completed() -> None:
    palette = resolve_palette(5, model_palette=[[1, 2, 3], [4, 5, 6]], dataset="ade20k")
    assert palette[:2].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert palette[2:].tolist() == generated_palette(5)[2:].tolist()
    with pytest.raises(ValueError, match=r"0\.\.255"):
        resolve_palette(2, model_palette=[[0, 0, 256]])


def test_generated_palette_is_fixed_and_distinct() -> None:
    colours = generated_palette(4096)
    assert len({tuple(c) for c in colours.tolist()}) == 4096
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]  # VOC's
    assert np.array_equal(colours[:300], generated_palette(300))
