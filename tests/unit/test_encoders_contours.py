"""Contours encoder: known answers on synthetic label maps."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from deployments.pipeline.contours import class_contours, class_pixels, region_contours
from deployments.pipeline.imaging import resize_labels

NAMES = ["background", "a", "b", "c"]


def by_id(labels: np.ndarray, **kwargs: object) -> dict[int, dict[str, Any]]:
    return {c.id: c.to_dict() for c in class_contours(labels, NAMES, **kwargs)}  # type: ignore[arg-type]


def corners(contour: dict[str, Any]) -> set[tuple[float, float]]:
    return {(x, y) for x, y in contour["coordinates"]}


def test_rectangle_contour_is_its_corner_pixel_centres() -> None:
    labels = np.zeros((10, 20), np.uint8)
    labels[2:6, 3:9] = 1  # rows 2..5, columns 3..8: 4 x 6 pixels
    rect = by_id(labels)[1]
    assert rect["name"] == "a"
    (contour,) = rect["contours"]
    # Pixel centres (x + 0.5) / width, (y + 0.5) / height.
    assert corners(contour) == {(0.175, 0.25), (0.175, 0.55), (0.425, 0.25), (0.425, 0.55)}
    # The polygon through the centres encloses (6 - 1) x (4 - 1) pixels of 200.
    assert contour["area"] == pytest.approx(15 / 200)
    assert contour["centroid"] == pytest.approx([0.3, 0.4])
    # The class's own area and centroid are its pixels'.
    assert rect["area"] == pytest.approx(24 / 200)
    assert rect["centroid"] == pytest.approx([0.3, 0.4])


def test_dense_contour_lists_every_boundary_pixel() -> None:
    labels = np.zeros((10, 20), np.uint8)
    labels[2:6, 3:9] = 1
    (simple,) = region_contours(labels == 1)
    (dense,) = region_contours(labels == 1, dense=True)
    assert len(simple.coordinates) == 4
    assert len(dense.coordinates) == 2 * (6 - 1) + 2 * (4 - 1)
    assert dense.area == simple.area


def test_ring_has_one_outer_contour_enclosing_its_hole() -> None:
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 1  # 10 x 10 square
    labels[7:13, 7:13] = 2  # 6 x 6 hole of another class
    found = by_id(labels)
    (ring,) = found[1]["contours"]
    assert ring["area"] == pytest.approx(9 * 9 / 400)  # the hole is inside the outline
    assert found[1]["area"] == pytest.approx((100 - 36) / 400)
    assert found[1]["centroid"] == pytest.approx([0.5, 0.5])
    (hole,) = found[2]["contours"]
    assert hole["area"] == pytest.approx(5 * 5 / 400)
    assert found[2]["area"] == pytest.approx(36 / 400)


def test_touching_classes_and_classes_at_the_border() -> None:
    labels = np.zeros((8, 10), np.uint8)
    labels[:, :5] = 1
    labels[:, 5:] = 2
    found = by_id(labels)
    assert set(found) == {1, 2}
    assert corners(found[1]["contours"][0]) == {
        (0.05, 0.0625),
        (0.05, 0.9375),
        (0.45, 0.0625),
        (0.45, 0.9375),
    }
    assert corners(found[2]["contours"][0]) == {
        (0.55, 0.0625),
        (0.55, 0.9375),
        (0.95, 0.0625),
        (0.95, 0.9375),
    }
    for class_id, centre_x in ((1, 0.25), (2, 0.75)):
        assert found[class_id]["area"] == pytest.approx(0.5)
        assert found[class_id]["centroid"] == pytest.approx([centre_x, 0.5])
        assert found[class_id]["contours"][0]["area"] == pytest.approx(4 * 7 / 80)


def test_whole_image_class_stays_inside_the_unit_square() -> None:
    labels = np.full((4, 6), 3, np.uint8)
    (only,) = class_contours(labels, NAMES)
    values = only.contours[0].coordinates
    assert values.min() > 0 and values.max() < 1
    assert only.area == 1.0
    assert only.centroid == pytest.approx((0.5, 0.5))


def test_one_pixel_class_is_a_point_enclosing_nothing() -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[9, 0] = 2  # the bottom-left corner
    dot = by_id(labels)[2]
    (contour,) = dot["contours"]
    assert contour["coordinates"] == [[0.05, 0.95]]
    assert contour["area"] == 0.0
    assert contour["centroid"] == pytest.approx([0.05, 0.95])
    assert dot["area"] == pytest.approx(0.01)


def test_regions_are_listed_largest_first_and_classes_by_pixels() -> None:
    labels = np.zeros((20, 30), np.uint8)
    labels[1:4, 1:4] = 1  # 3 x 3
    labels[10:18, 10:20] = 1  # 8 x 10
    labels[0:20, 25:30] = 2  # 100 pixels: more than class 1's 89
    found = class_contours(labels, NAMES)
    assert [c.id for c in found] == [0, 2, 1]
    small, large = 2 * 2 / 600, 9 * 7 / 600
    assert [c.area for c in found[2].contours] == pytest.approx([large, small])
    # The class centroid weights each region by its pixels.
    expected_x = (9 * 2.5 + 80 * 15.0) / 89 / 30
    assert found[2].centroid[0] == pytest.approx(expected_x)


def test_min_area_and_max_classes() -> None:
    labels = np.zeros((20, 30), np.uint8)
    labels[1:4, 1:4] = 1  # encloses 4 / 600
    labels[10:18, 10:20] = 1  # encloses 63 / 600
    labels[0:2, 25:27] = 2  # encloses 1 / 600
    found = class_contours(labels, NAMES, min_area=3 / 600)
    assert [c.id for c in found] == [0, 1]  # class 2 lost its only contour
    assert len(found[1].contours) == 2
    found = class_contours(labels, NAMES, min_area=10 / 600)
    assert len(found[1].contours) == 1
    assert [c.id for c in class_contours(labels, NAMES, max_classes=2)] == [0, 1]


def test_simplify_cuts_points_but_keeps_area_and_centroid() -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    labels = (((xx - 100) ** 2 + (yy - 100) ** 2) < 80**2).astype(np.uint8)
    (exact,) = [c for c in class_contours(labels, NAMES) if c.id == 1]
    (rough,) = [c for c in class_contours(labels, NAMES, simplify=3.0) if c.id == 1]
    assert len(rough.contours[0].coordinates) < len(exact.contours[0].coordinates) // 3
    assert rough.contours[0].area == exact.contours[0].area
    assert rough.centroid == exact.centroid
    # Simplified points stay within the tolerance of the circle's outline (3 px of 200).
    radius = np.hypot(*(rough.contours[0].coordinates * 200 - 100).T)
    assert np.all(np.abs(radius - 80) < 4)


def test_simplify_tolerance_is_in_original_pixels() -> None:
    yy, xx = np.mgrid[0:100, 0:100]
    labels = (((xx - 50) ** 2 + (yy - 50) ** 2) < 40**2).astype(np.uint8)
    at_mask = class_contours(labels, NAMES, simplify=2.0)
    # The same tolerance in pixels of a 10x larger original is a tenth of a mask pixel.
    at_original = class_contours(labels, NAMES, simplify=2.0, original_size=(1000, 1000))
    points = {c.id: len(c.contours[0].coordinates) for c in at_mask}
    points_original = {c.id: len(c.contours[0].coordinates) for c in at_original}
    assert points_original[1] > points[1]


@pytest.mark.parametrize(("small", "original"), [((7, 5), (23, 17)), ((20, 10), (200, 100))])
def test_class_area_and_centroid_are_those_at_the_original_size(
    small: tuple[int, int], original: tuple[int, int]
) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (small[1], small[0])).astype(np.uint8)
    from_small = {c.id: c for c in class_contours(labels, NAMES, original_size=original)}
    full = resize_labels(labels, *original)
    from_full = {c.id: c for c in class_contours(full, NAMES)}
    assert from_small.keys() == from_full.keys()
    for class_id, expected in from_full.items():
        assert from_small[class_id].area == pytest.approx(expected.area, abs=1e-12)
        assert from_small[class_id].centroid == pytest.approx(expected.centroid, abs=1e-12)
    counts = class_pixels(labels, *original).counts
    assert np.array_equal(counts, np.bincount(full.ravel(), minlength=len(counts)))


def test_contours_of_a_huge_photo_never_allocate_its_size() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((418, 627), np.uint8)
    for class_id in range(1, 40):  # 39 classes of random blobs
        y, x = rng.integers(0, 380), rng.integers(0, 590)
        labels[y : y + 40, x : x + 40] = class_id
    tracemalloc.start()
    try:
        found = class_contours(labels, NAMES, original_size=(6000, 4000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(found) == 40
    # A full-size uint8 mask alone would be 24 MB.
    assert peak < 8 * 1024 * 1024


def test_not_a_label_map_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        class_contours(np.zeros((2, 2, 3), np.uint8), NAMES)
    with pytest.raises(ValueError, match="non-negative"):
        class_contours(np.zeros((2, 2), np.uint8), NAMES, min_area=-1)


def test_searching_each_class_within_its_box_finds_the_same_contours() -> None:
    rng = np.random.default_rng(5)
    labels = np.zeros((60, 90), np.uint8)
    for class_id in (1, 2, 3):
        for _ in range(4):
            y, x = rng.integers(0, 50), rng.integers(0, 80)
            labels[y : y + rng.integers(1, 10), x : x + rng.integers(1, 10)] = class_id
    for entry in class_contours(labels, NAMES, dense=True):
        whole = region_contours(labels == entry.id, dense=True)
        assert entry.to_dict()["contours"] == [c.to_dict() for c in whole]
