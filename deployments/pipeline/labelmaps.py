"""Label-map geometry: sizes within a pixel bound, nearest-neighbour resizing, class counts.

Index arithmetic on numpy arrays: a label map is never upsampled through
logits, and counts at a large size come from the small map with exact weights.
"""

from __future__ import annotations

import math

import numpy as np


def fit_within(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most ``max_pixels`` pixels."""
    if width * height <= max_pixels:
        return width, height
    factor = math.sqrt(max_pixels / (width * height))
    w, h = max(1, math.floor(width * factor)), max(1, math.floor(height * factor))
    if w * h > max_pixels:  # extreme aspect ratios: one side was clamped to 1
        if w == 1:
            h = max_pixels
        else:
            w = max_pixels // h
    return w, h


def nearest_indices(source: int, target: int) -> np.ndarray:
    """Source index of each target index for a nearest-neighbour resize (centre-aligned)."""
    positions = (np.arange(target, dtype=np.float64) + 0.5) * (source / target)
    return np.minimum(positions.astype(np.int64), source - 1)


def resize_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map; never mixes class ids."""
    src_h, src_w = labels.shape
    if (src_w, src_h) == (width, height):
        return labels
    rows = nearest_indices(src_h, height)
    cols = nearest_indices(src_w, width)
    return np.ascontiguousarray(labels.take(rows, axis=0).take(cols, axis=1))


def class_pixel_counts(labels: np.ndarray, width: int, height: int, num_classes: int) -> np.ndarray:
    """Pixels per class that ``resize_labels(labels, width, height)`` would hold.

    Computed on the small label map (each source pixel weighted by how many target
    pixels copy it), so the class table of a 6000x4000 photo never needs the
    full-size mask.
    """
    src_h, src_w = labels.shape
    row_weight = np.bincount(nearest_indices(src_h, height), minlength=src_h)
    col_weight = np.bincount(nearest_indices(src_w, width), minlength=src_w)
    weights = np.outer(row_weight, col_weight).ravel().astype(np.float64)
    size = max(num_classes, int(labels.max()) + 1 if labels.size else 0)
    counts = np.bincount(labels.ravel(), weights=weights, minlength=size)
    return np.rint(counts).astype(np.int64)
