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

from deployments.pipeline.contours import class_name


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
