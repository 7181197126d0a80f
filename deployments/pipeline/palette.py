"""Class colour palettes for drawing label maps.

The standard datasets' palettes are the ones MMSegmentation ships (Apache-2.0,
``mmseg/datasets/ade.py`` and ``cityscapes.py``); ADE20K's is the CSAIL colour
coding that HuggingFace's SegFormer demos use too, and Cityscapes' is the
official one. A model without a dataset palette gets a fixed, deterministic one
(the bit-interleaved colour map of PASCAL VOC, extended to 24 bits so every id
below 2**24 has its own colour), so the same class is always drawn alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)  # fmt: skip

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

DATASET_PALETTES = {"ade20k": ADE20K_PALETTE, "cityscapes": CITYSCAPES_PALETTE}


def generated_palette(count: int) -> np.ndarray:
    """``count`` distinct colours, the same every time (PASCAL VOC's colour map).

    Each id's bits are dealt out to red, green and blue from the most significant
    bit down, so neighbouring ids get very different colours. Id 0 is black.
    """
    ids = np.arange(count, dtype=np.int64)
    colours = np.zeros((count, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    return colours.astype(np.uint8)


def resolve_palette(
    num_classes: int,
    *,
    model_palette: Sequence[Sequence[int]] | None = None,
    dataset: str | None = None,
) -> np.ndarray:
    """The (num_classes, 3) uint8 colours to draw a model's classes with.

    The model's own palette wins (MMSegmentation checkpoints carry one), then the
    dataset's, then :func:`generated_palette`; a palette shorter than the class
    count is completed with generated colours.
    """
    count = max(int(num_classes), 1)
    palette = generated_palette(count)
    chosen: Sequence[Sequence[int]] | None = model_palette or (
        DATASET_PALETTES.get(dataset) if dataset else None
    )
    if chosen:
        known = np.asarray(chosen, dtype=np.int64)[:count]
        if known.ndim != 2 or known.shape[1] != 3:
            raise ValueError(f"a palette is a list of [r, g, b]; got shape {known.shape}")
        if known.size and (known.min() < 0 or known.max() > 255):
            raise ValueError("palette colours are 0..255")
        palette[: len(known)] = known.astype(np.uint8)
    return palette


def palette_covering(palette: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``palette`` extended with generated colours up to the largest id in ``labels``."""
    needed = int(labels.max()) + 1 if labels.size else 0
    if needed <= len(palette):
        return palette
    extended = generated_palette(needed)
    extended[: len(palette)] = palette
    return extended
