"""PyTorch's bilinear upsampling replayed at chosen pixels, bit for bit.

``F.interpolate(mode="bilinear")`` computes each output pixel from the 2x2 cell of
source values its row and column name, with weights from the source coordinate
``scale * (dst + 0.5) - 0.5`` (``scale * dst`` with ``align_corners``). Its CPU
kernel blends each source row across its two columns, then the two rows; builds
with FMA (AVX2, AVX-512) round each blend once, as a fused multiply-add, and the
default build rounds each product and sum. :func:`replayed_arithmetic` finds
which, once per process and device, by comparing with ``F.interpolate`` itself;
:func:`replay` then reproduces its scores at any pixels.

PyTorch takes other kernel paths (other roundings) for channels-last input, for
outputs with ``h + w <= 128`` and, on one thread, for exactly three channels;
callers keep to contiguous scores and stay off the other two.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

#: PyTorch's CPU kernel takes a separable path for outputs with ``h + w`` up to this.
SEPARABLE_OUTPUT = 128


class Arithmetic(NamedTuple):
    """How a kernel rounds: whether it fuses the source coordinate
    ``scale * (dst + 0.5) - 0.5`` and each blend ``a * w0 + b * w1`` (multiply-adds)."""

    fused_source: bool
    fused_blend: bool


class SourceIndices(NamedTuple):
    """Per output row (or column): the two source indices and their weights."""

    index0: torch.Tensor
    index1: torch.Tensor
    weight0: torch.Tensor
    weight1: torch.Tensor


@functools.lru_cache(maxsize=256)
def _source_indices(
    in_size: int, out_size: int, align_corners: bool, fused: bool, device: str
) -> SourceIndices:
    dst = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        scale = float(np.float32(in_size - 1) / np.float32(out_size - 1)) if out_size > 1 else 0.0
        src = (scale * dst).float()  # one float32 product (exact in float64, then rounded)
    else:
        scale = float(np.float32(in_size) / np.float32(out_size))  # a float32 division
        if fused:  # rounded once: exact in float64 before
            src = (scale * (dst + 0.5) - 0.5).float()
        else:
            src = ((scale * (dst + 0.5)).float().double() - 0.5).float()
        src = src.clamp(min=0)
    index0 = src.floor().long().clamp(max=in_size - 1)
    lam = (src - index0.float()).clamp(0, 1)
    index1 = index0 + (index0 < in_size - 1).long()
    on = torch.device(device)
    return SourceIndices(index0.to(on), index1.to(on), (1 - lam).to(on), lam.to(on))


def source_indices(
    in_size: int, out_size: int, align_corners: bool, arithmetic: Arithmetic, device: torch.device
) -> SourceIndices:
    """The source indices and weights of each output row (or column), as PyTorch's
    ``area_pixel_compute_source_index`` and ``guard_index_and_lambda`` give them."""
    return _source_indices(in_size, out_size, align_corners, arithmetic.fused_source, str(device))


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` of float32 tensors rounded once to float32, as a fused multiply-add."""
    product = a.double() * b.double()  # exact: 24 + 24 significant bits
    addend = c.double()
    total = product + addend  # rounded to float64 ...
    result = total.float()  # ... and then to float32: right unless total is a halfway point
    near = result.double()
    gap = total - near
    other = near + 2 * gap  # the float on total's other side, if total is halfway
    halfway = (gap != 0) & (other.float().double() == other)
    if bool(halfway.any()):
        back = total - product  # two-sum: what the float64 addition lost
        lost = (product - (total - back)) + (addend - back)
        up = torch.maximum(result, other.float())
        down = torch.minimum(result, other.float())
        nudged = torch.where(lost > 0, up, torch.where(lost < 0, down, result))
        result = torch.where(halfway, nudged, result)
    return result


def replay(
    logits: torch.Tensor,
    rows: SourceIndices,
    cols: SourceIndices,
    pixel_rows: torch.Tensor,
    pixel_cols: torch.Tensor,
    ids: torch.Tensor,
    fused: bool,
) -> torch.Tensor:
    """Upsampled scores (k, n) of classes ``ids`` (k, n) at pixels (n,) of (C, H, W)
    ``logits``: each source row blended across its two columns, then the two rows;
    every blend rounded once (``fused``) or each product and sum rounded."""
    top, bottom = rows.index0.take(pixel_rows), rows.index1.take(pixel_rows)
    left, right = cols.index0.take(pixel_cols), cols.index1.take(pixel_cols)
    v00, v01, v10, v11 = corners(logits, ids, (top, bottom), (left, right))
    wx0, wx1 = cols.weight0.take(pixel_cols), cols.weight1.take(pixel_cols)
    wy0, wy1 = rows.weight0.take(pixel_rows), rows.weight1.take(pixel_rows)
    if not fused:
        return blend_unfused((v00, v01, v10, v11), (wx0, wx1), (wy0, wy1))
    upper = fma(v00, wx0, v01 * wx1)
    lower = fma(v10, wx0, v11 * wx1)
    return fma(upper, wy0, lower * wy1)


def corners(
    logits: torch.Tensor,
    ids: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four source values (top left, top right, bottom left, bottom right) of classes
    ``ids`` of (C, H, W) ``logits`` at source rows (top, bottom) and columns (left, right),
    all broadcast together."""
    _, in_h, in_w = logits.shape
    flat = logits.view(-1)
    (top, bottom), (left, right) = rows, cols
    base = ids * (in_h * in_w) + (top * in_w + left)
    down, across = (bottom - top) * in_w, right - left
    return (
        flat.take(base),
        flat.take(base + across),
        flat.take(base + down),
        flat.take(base + (down + across)),
    )


def blend_unfused(
    values: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    wx: tuple[torch.Tensor, torch.Tensor],
    wy: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The kernel's blend with each product and sum rounded: both source rows across their
    two columns, then the two rows (operands broadcast; the order of the operations is
    the kernel's, so the result is too)."""
    (v00, v01, v10, v11), (wx0, wx1), (wy0, wy1) = values, wx, wy
    return (v00 * wx0 + v01 * wx1) * wy0 + (v10 * wx0 + v11 * wx1) * wy1


#: (H, W, h, w) the arithmetic is checked on: long rows and columns (many roundings of the
#: source coordinate), up- and downscaling, non-integer ratios, an unscaled axis.
PROBES = (
    (128, 2, 1500, 3),
    (2, 128, 3, 1500),
    (13, 17, 150, 31),
    (37, 41, 20, 130),
    (7, 9, 7, 300),
)


@functools.cache
def replayed_arithmetic(device_type: str) -> Arithmetic | None:
    """The rounding of ``F.interpolate`` on this device, if :func:`replay` knows it.

    Checked once per process: each candidate arithmetic replays a few random
    upsamplings (four channels) at every pixel; the first that equals
    ``F.interpolate`` bit for bit everywhere is used; None when none does.
    """
    device = torch.device(device_type)
    generator = torch.Generator().manual_seed(0)
    cases = []
    with torch.inference_mode():
        for in_h, in_w, height, width in PROBES:
            logits = (torch.randn(4, in_h, in_w, generator=generator) * 8).to(device)
            for align_corners in (False, True):
                expected = F.interpolate(
                    logits[None], (height, width), mode="bilinear", align_corners=align_corners
                )[0]
                cases.append((logits, height, width, align_corners, expected))
        for fused_source in (True, False):
            for fused_blend in (True, False):
                arithmetic = Arithmetic(fused_source, fused_blend)
                if all(_replays(arithmetic, *case) for case in cases):
                    return arithmetic
    return None


def _replays(
    arithmetic: Arithmetic,
    logits: torch.Tensor,
    height: int,
    width: int,
    align_corners: bool,
    expected: torch.Tensor,
) -> bool:
    classes, in_h, in_w = logits.shape
    device = logits.device
    rows = source_indices(in_h, height, align_corners, arithmetic, device)
    cols = source_indices(in_w, width, align_corners, arithmetic, device)
    pixels = torch.arange(height * width, device=device)
    ids = torch.arange(classes, device=device)[:, None].expand(classes, len(pixels))
    scores = replay(
        logits, rows, cols, pixels // width, pixels % width, ids, arithmetic.fused_blend
    )
    return bool(torch.equal(scores.reshape(classes, height, width), expected))
