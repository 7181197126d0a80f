"""RLE encoder: COCO run-length encoding that pycocotools decodes back exactly."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from deployments.pipeline.rle import class_rle, encode_mask

NAMES = ["background", "a", "b"]
# pycocotools' decode (not encode, which the server uses) trips numpy 2's copy= deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def decode(entry: dict[str, Any]) -> np.ndarray:
    decoded: np.ndarray = coco_mask.decode(
        {"size": entry["size"], "counts": entry["counts"].encode("ascii")}
    )
    return decoded


def shapes() -> np.ndarray:
    labels = np.zeros((31, 47), np.uint8)
    labels[3:20, 5:30] = 1  # rectangle
    labels[8:15, 10:25] = 2  # touching hole
    labels[0, 46] = 2  # one pixel at the corner
    labels[30, :] = 1  # a border row
    return labels


@pytest.mark.parametrize("labels", [shapes(), np.random.default_rng(1).integers(0, 3, (64, 33))])
def test_every_class_decodes_back_to_its_exact_mask(labels: np.ndarray) -> None:
    labels = labels.astype(np.uint8)
    entries: list[dict[str, Any]] = [e.to_dict() for e in class_rle(labels, NAMES)]
    assert {e["id"] for e in entries} == set(np.unique(labels).tolist())
    for entry in entries:
        assert entry["size"] == [labels.shape[0], labels.shape[1]]
        assert isinstance(entry["counts"], str)
        mask = decode(entry)
        assert np.array_equal(mask, labels == entry["id"])
        assert entry["pixels"] == int(mask.sum())
        assert entry["name"] == NAMES[entry["id"]]
    json.dumps(entries)  # plain JSON


def test_counts_are_cocos_compressed_form_of_column_major_runs() -> None:
    # Column-major [0, 1, 1, 1]: one background pixel, then three of the class.
    mask = np.array([[0, 1], [1, 1]], dtype=bool)
    expected = coco_mask.frPyObjects({"size": [2, 2], "counts": [1, 3]}, 2, 2)
    assert encode_mask(mask) == {"size": [2, 2], "counts": expected["counts"].decode("ascii")}


def test_classes_are_ordered_by_pixels_and_ids_beyond_the_names_are_named() -> None:
    labels = np.zeros((4, 4), np.uint16)
    labels[:, :3] = 300
    labels[0, 3] = 1
    entries = class_rle(labels, NAMES)
    assert [(e.id, e.name, e.pixels) for e in entries] == [
        (300, "class_300", 12),
        (0, "background", 3),
        (1, "a", 1),
    ]


# ------------------------------------------------ RLE at a larger mask size, from the small map


@pytest.mark.parametrize(
    ("small", "size"),
    [
        (shapes(), (47, 31)),  # the same size
        (shapes(), (200, 93)),  # upscaled, uneven factors
        (shapes(), (20, 11)),  # downscaled: rows and columns skipped
        (np.random.default_rng(2).integers(0, 3, (17, 29)), (301, 77)),
        (np.full((3, 4), 2), (9, 5)),  # one class, starting with a 1-run
        (np.array([[1]]), (1, 1)),
    ],
)
def test_scaled_rle_equals_encoding_the_resized_map(
    small: np.ndarray, size: tuple[int, int]
) -> None:
    from deployments.pipeline.imaging import resize_labels
    from deployments.pipeline.rle import scaled_class_rle

    small = small.astype(np.uint8)
    scaled = [r.to_dict() for r in scaled_class_rle(small, size, NAMES)]
    full = resize_labels(small, *size)
    assert scaled == [r.to_dict() for r in class_rle(full, NAMES)]
    for entry in scaled:
        assert np.array_equal(decode(entry).astype(bool), full == entry["id"])
