"""RLE encoder: each class's mask as COCO run-length encoding.

The format COCO-style tools and many annotation UIs read (``pycocotools.mask``):
``{"size": [height, width], "counts": <compressed string>}``, column-major runs
starting with background. Encoded at the mask's size (the server's label map, or
the size the client asked for): a client that wants another size decodes and
resizes, as it would a mask PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as coco_mask

from deployments.pipeline.contours import class_name, class_pixels
from deployments.pipeline.imaging import nearest_indices


@dataclass(frozen=True)
class ClassRle:
    """One class's mask in COCO RLE."""

    id: int
    name: str
    pixels: int
    size: tuple[int, int]  # (height, width), COCO's order
    counts: str

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "pixels": self.pixels,
            "size": list(self.size),
            "counts": self.counts,
        }

    def to_coco(self) -> dict[str, object]:
        """The object ``pycocotools.mask.decode`` takes."""
        return {"size": list(self.size), "counts": self.counts}


def encode_mask(mask: np.ndarray) -> dict[str, object]:
    """COCO RLE of one 2-D boolean mask, counts decoded to ``str`` (JSON-ready)."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {mask.shape}")
    # pycocotools reads column-major uint8 and refuses anything else.
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
    }


def class_rle(labels: np.ndarray, names: Sequence[str]) -> list[ClassRle]:
    """COCO RLE of every class present in ``labels``, most pixels first (ties by id)."""
    if labels.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {labels.shape}")
    counts = np.bincount(labels.ravel()) if labels.size else np.zeros(0, np.int64)
    present = sorted(map(int, np.flatnonzero(counts)), key=lambda i: (-int(counts[i]), i))
    height, width = labels.shape
    result = []
    for class_id in present:
        encoded = encode_mask(labels == class_id)
        result.append(
            ClassRle(
                id=class_id,
                name=class_name(names, class_id),
                pixels=int(counts[class_id]),
                size=(height, width),
                counts=str(encoded["counts"]),
            )
        )
    return result


def scaled_class_rle(
    labels: np.ndarray, size: tuple[int, int], names: Sequence[str]
) -> list[ClassRle]:
    """:func:`class_rle` of ``resize_labels(labels, *size)``, without that array.

    The resized map's columns are the small map's columns, each row repeated, so its
    column-major runs follow from where the small map changes: per class the work
    is its number of runs, not the output's pixels (a 6000x4000 mask with a hundred
    classes would otherwise be a hundred full-size masks to compare and encode).
    pycocotools compresses the counts, so the strings are its own.
    """
    width, height = size
    if labels.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {labels.shape}")
    if (height, width) == labels.shape:  # nothing to scale: pycocotools' encode is faster
        return class_rle(labels, names)
    rows = nearest_indices(labels.shape[0], height)
    cols = nearest_indices(labels.shape[1], width)
    # Runs of equal source rows: full rows from row_starts[m] on copy one source row.
    row_starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    by_rows = labels[rows[row_starts]]  # (distinct rows, small width)
    pixels = class_pixels(labels, width, height)
    result = []
    for class_id in pixels.ranked():
        inside = by_rows == class_id
        # Changes down each source column, at the full row where they happen.
        change_col, change_m = np.nonzero((inside[1:] != inside[:-1]).T)  # by column
        change_rows = row_starts[change_m + 1]
        per_col = np.bincount(change_col, minlength=inside.shape[1])
        col_offset = np.r_[0, np.cumsum(per_col)[:-1]]
        counts_per_full_col = per_col[cols]
        full_col = np.repeat(np.arange(width), counts_per_full_col)
        first_of_col = np.r_[0, np.cumsum(counts_per_full_col)[:-1]]
        within = np.arange(len(full_col)) - np.repeat(first_of_col, counts_per_full_col)
        positions = change_rows[col_offset[cols][full_col] + within] + full_col * height
        # Changes where one column ends and the next begins, and at the very start.
        first, last = inside[0, cols], inside[-1, cols]
        seams = (np.flatnonzero(last[:-1] != first[1:]) + 1) * height
        start = np.array([0] if first[0] else [], dtype=np.int64)
        changes = np.sort(np.concatenate([start, seams, positions]).astype(np.int64))
        counts = np.diff(np.r_[0, changes, width * height])
        encoded = coco_mask.frPyObjects(
            {"counts": counts.tolist(), "size": [height, width]}, height, width
        )
        result.append(
            ClassRle(
                id=class_id,
                name=class_name(names, class_id),
                pixels=int(counts[1::2].sum()),
                size=(height, width),
                counts=encoded["counts"].decode("ascii"),
            )
        )
    return result
