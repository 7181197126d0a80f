"""Overlay encoder: the photo with its label map blended on top, as PNG or JPEG.

The picture is made at the original size up to ``max_pixels`` (else scaled
down, aspect kept), from the decoded photo and the server's small label map
(resized by nearest neighbour row block by row block, never as a whole). The
blend is integer arithmetic in uint16, block by block, so a large photo costs
its output buffer plus a few megabytes, and no float array of it is ever made:

    A = round(alpha * 256)
    out = (photo * (256 - A) + colour * A + 128) >> 8     (per channel)

which is ``photo`` at alpha 0, the palette colour at alpha 1, and within half a
level of ``(1 - alpha) * photo + alpha * colour`` in between.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deployments.pipeline.contours import class_name
from deployments.pipeline.imaging import fit_within, nearest_indices
from deployments.pipeline.palette import palette_covering

FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}
#: Rows blended at a time: ~2-5 MB of uint16 temporaries for a 6000-pixel-wide row block.
_BLOCK_ROWS = 128
_LITTLE_ENDIAN = sys.byteorder == "little"


def blend_weight(alpha: float) -> int:
    """The integer weight A (0..256) of the label colour for ``alpha`` in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return round(alpha * 256)


def blend_labels(
    photo: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    alpha: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``photo`` (H, W, 3 uint8) with ``labels`` (any size) blended in ``palette``'s colours.

    ``labels`` is resized to the photo's size by nearest neighbour as
    :func:`imaging.resize_labels` does. ``out`` may be ``photo`` itself to blend in place.
    """
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"a photo is (height, width, 3) uint8, got {photo.shape} {photo.dtype}")
    if labels.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {labels.shape}")
    weight = blend_weight(alpha)
    height, width = photo.shape[:2]
    colours = palette_covering(np.asarray(palette, dtype=np.uint8), labels)
    # Both terms as look-up tables (photo * (256 - A), colour * A + 128): per pixel
    # the work is two table look-ups, one add and taking the high byte.
    keep_term = np.arange(256, dtype=np.uint16) * np.uint16(256 - weight)
    colour_term = colours.astype(np.uint16) * np.uint16(weight) + np.uint16(128)
    rows = nearest_indices(labels.shape[0], height)
    cols = nearest_indices(labels.shape[1], width)
    result = np.empty_like(photo) if out is None else out
    by_table = labels.dtype == np.uint8 and len(colour_term) <= 256
    if by_table:
        colour_lut = np.zeros((256, 1, 3), dtype=np.uint16)
        colour_lut[: len(colour_term), 0] = colour_term
        keep_lut = keep_term.reshape(256, 1)
    for start in range(0, height, _BLOCK_ROWS):
        stop = min(height, start + _BLOCK_ROWS)
        block_labels = np.ascontiguousarray(labels[rows[start:stop]][:, cols])
        if by_table:  # OpenCV's LUT is many times faster than numpy's fancy indexing
            acc = cv2.add(
                cv2.LUT(np.ascontiguousarray(photo[start:stop]), keep_lut),
                cv2.LUT(cv2.merge([block_labels] * 3), colour_lut),
            )
        else:  # ids above 255: the same sums with numpy
            acc = keep_term[photo[start:stop]] + colour_term[block_labels]
        # The high byte of each little-endian uint16 is the sum >> 8.
        result[start:stop] = _high_byte(acc)
    return result


def _high_byte(values: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(values, dtype=np.uint16)
    if values.dtype.byteorder == ">" or (values.dtype.byteorder == "=" and not _LITTLE_ENDIAN):
        return (values >> 8).astype(np.uint8)
    return values.view(np.uint8)[..., 1::2]


def overlay_image(
    photo: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    *,
    alpha: float,
    fmt: str,
    max_pixels: int,
    size: tuple[int, int] | None = None,
    legend_names: Sequence[str] | None = None,
    jpeg_quality: int = 90,
) -> bytes:
    """The overlay picture, encoded as PNG or JPEG bytes.

    ``photo`` is the decoded image (H, W, 3 uint8, any bounded size), ``labels``
    the server's label map, ``size`` the original (width, height) (default: the
    photo's). The picture is ``size`` scaled down to at most ``max_pixels``; the
    photo is resized to it (area-averaged) when it differs, so pass a photo at least
    that large for a sharp result. ``legend_names`` (the model's class names)
    adds a legend of the classes present; None draws none.
    """
    image_format = FORMATS.get(fmt.lower())
    if image_format is None:
        raise ValueError(f"overlay format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    width, height = size or (int(photo.shape[1]), int(photo.shape[0]))
    out_w, out_h = fit_within(width, height, max_pixels)
    if (out_w, out_h) == (photo.shape[1], photo.shape[0]):
        picture = blend_labels(photo, labels, palette, alpha)
    else:
        # Area averaging when shrinking (no aliasing, and OpenCV's is several times
        # faster than Pillow's on a large photo); bilinear when enlarging.
        shrinking = out_w * out_h < photo.shape[0] * photo.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        resized = np.ascontiguousarray(
            cv2.resize(np.ascontiguousarray(photo), (out_w, out_h), interpolation=interpolation)
        )
        picture = blend_labels(resized, labels, palette, alpha, out=resized)
    image = Image.fromarray(picture)
    if legend_names is not None:
        draw_legend(image, legend_entries(labels, palette, legend_names))
    buffer = io.BytesIO()
    if image_format == "PNG":
        # Level 1: photos barely compress better at 9, and 9 takes many times longer.
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def legend_entries(
    labels: np.ndarray, palette: np.ndarray, names: Sequence[str]
) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of each class present, most pixels first (ties by id)."""
    counts = np.bincount(labels.ravel()) if labels.size else np.zeros(0, np.int64)
    colours = palette_covering(np.asarray(palette, dtype=np.uint8), labels)
    present = sorted(map(int, np.flatnonzero(counts)), key=lambda i: (-int(counts[i]), i))
    return [
        (class_name(names, i), (int(colours[i][0]), int(colours[i][1]), int(colours[i][2])))
        for i in present
    ]


def draw_legend(image: Image.Image, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
    """Draw a legend box (swatch and name per entry) in the top-left corner, in place.

    Sized to the picture (text about 1/40 of its short side, 10-40 px); entries
    that do not fit are summed up as "+N more".
    """
    if not entries:
        return
    text_px = int(min(40, max(10, min(image.size) // 40)))
    font = _font(text_px)
    draw = ImageDraw.Draw(image)
    pad = max(2, text_px // 3)
    row_h = text_px + pad
    fits = max(1, (image.height - 2 * pad) // row_h)
    shown = list(entries)
    if len(shown) > fits:
        more = len(shown) - (fits - 1)
        shown = [*shown[: fits - 1], (f"+{more} more", (0, 0, 0))] if fits > 1 else shown[:1]
    text_w = max(int(draw.textlength(name, font=font)) for name, _ in shown)
    box_w = pad + text_px + pad + text_w + pad
    box_h = pad + row_h * len(shown)
    draw.rectangle((0, 0, box_w, box_h), fill=(0, 0, 0))
    for row, (name, colour) in enumerate(shown):
        top = pad + row * row_h
        if not name.startswith("+") or colour != (0, 0, 0):
            draw.rectangle(
                (pad, top, pad + text_px - 1, top + text_px - 1),
                fill=colour,
                outline=(255, 255, 255),
            )
        draw.text((2 * pad + text_px, top), name, fill=(255, 255, 255), font=font)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()
