"""Contours encoder: each class's regions as polygons in normalised coordinates.

Computed with OpenCV (``findContours``, outer contours only) on the server's
small label map, never on a full-size mask of a large photo; the numbers are
made to hold at the original size:

- Coordinates are pixel *centres*: the contour point at column ``x`` of a mask
  ``w`` pixels wide is ``(x + 0.5) / w`` (and ``y`` likewise by the height), so a
  point keeps its place in the picture whatever the mask's size (the label map is
  resized centre-aligned, see :func:`imaging.nearest_indices`). Every value lies
  strictly inside (0, 1); the image's corner pixel is at ``0.5 / w``, not 0.
- A contour's ``area`` is the area its polygon encloses (holes included, as
  OpenCV's ``contourArea``) as a fraction of the image; since the polygon runs
  through pixel centres, a region of ``a x b`` pixels encloses ``(a-1)(b-1)`` and
  a one-pixel or one-pixel-wide region encloses 0. Its ``centroid`` is the
  polygon's (from its moments), or the mean of its points when it encloses nothing.
- A class's ``area`` is its share of the image's pixels and its ``centroid`` the
  mean of its pixels' centres, both exactly those of the label map resized to the
  original size (computed on the small map by weighting), so they agree with the
  class table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from deployments.pipeline.imaging import nearest_indices

#: Decimal places kept in coordinates and areas: finer than a pixel of a
#: 100-megapixel image, and it keeps the JSON of a long contour short.
DECIMALS = 6


@dataclass(frozen=True, eq=False)  # an array field: compare to_dict() instead
class Contour:
    """One region's outer contour, normalised to [0, 1] by width and height.

    Values are kept at full precision (thresholds compare them exactly) and
    rounded to :data:`DECIMALS` places only by :meth:`to_dict`.
    """

    coordinates: np.ndarray  # (n, 2) float64, x by width, y by height
    area: float
    centroid: tuple[float, float]

    def to_dict(self) -> dict[str, object]:
        return {
            "coordinates": np.round(self.coordinates, DECIMALS).tolist(),
            "centroid": [round(self.centroid[0], DECIMALS), round(self.centroid[1], DECIMALS)],
            "area": round(self.area, DECIMALS),
        }


@dataclass(frozen=True, eq=False)
class ClassContours:
    """A class present in the label map: its share, its centroid and its regions."""

    id: int
    name: str
    area: float
    centroid: tuple[float, float]
    contours: list[Contour]

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "area": round(self.area, DECIMALS),
            "centroid": [round(self.centroid[0], DECIMALS), round(self.centroid[1], DECIMALS)],
            "contours": contours_to_dicts(self.contours),
        }


def contours_to_dicts(contours: Sequence[Contour]) -> list[dict[str, object]]:
    """``[c.to_dict() for c in contours]``, rounding all coordinates in one numpy call.

    A photo's classes have hundreds of short contours; one call per contour
    would cost more than finding them.
    """
    if not contours:
        return []
    rounded = np.round(np.concatenate([c.coordinates for c in contours]), DECIMALS).tolist()
    result: list[dict[str, object]] = []
    start = 0
    for contour in contours:
        stop = start + len(contour.coordinates)
        result.append(
            {
                "coordinates": rounded[start:stop],
                "centroid": [
                    round(contour.centroid[0], DECIMALS),
                    round(contour.centroid[1], DECIMALS),
                ],
                "area": round(contour.area, DECIMALS),
            }
        )
        start = stop
    return result


@dataclass(frozen=True)
class ClassPixels:
    """Per class id: pixels and the sums of their centres, at the original size."""

    counts: np.ndarray  # float64, pixels per class id
    sum_x: np.ndarray  # sum of (column + 0.5) over the class's pixels
    sum_y: np.ndarray
    width: int
    height: int

    def area(self, class_id: int) -> float:
        return float(self.counts[class_id]) / (self.width * self.height)

    def centroid(self, class_id: int) -> tuple[float, float]:
        count = float(self.counts[class_id])
        return (
            float(self.sum_x[class_id]) / count / self.width,
            float(self.sum_y[class_id]) / count / self.height,
        )

    def ranked(self) -> list[int]:
        """Class ids present, most pixels first (ties by id), as the class table."""
        present = np.flatnonzero(self.counts > 0.5)
        return sorted(map(int, present), key=lambda i: (-float(self.counts[i]), i))


def class_pixels(labels: np.ndarray, width: int, height: int) -> ClassPixels:
    """Pixel counts and centre sums per class of ``resize_labels(labels, width, height)``.

    Each small-map pixel stands for the block of original pixels that copy it, so
    a 6000x4000 photo's statistics come from its 627x418 map without resizing it.
    """
    src_h, src_w = labels.shape
    rows = nearest_indices(src_h, height)
    cols = nearest_indices(src_w, width)
    row_count = np.bincount(rows, minlength=src_h).astype(np.float64)
    col_count = np.bincount(cols, minlength=src_w).astype(np.float64)
    row_sum = np.bincount(rows, weights=np.arange(height) + 0.5, minlength=src_h)
    col_sum = np.bincount(cols, weights=np.arange(width) + 0.5, minlength=src_w)
    flat = labels.ravel()
    size = int(flat.max()) + 1 if flat.size else 0
    return ClassPixels(
        counts=np.bincount(flat, np.outer(row_count, col_count).ravel(), minlength=size),
        sum_x=np.bincount(flat, np.outer(row_count, col_sum).ravel(), minlength=size),
        sum_y=np.bincount(flat, np.outer(row_sum, col_count).ravel(), minlength=size),
        width=int(width),
        height=int(height),
    )


def region_contours(
    mask: np.ndarray,
    *,
    simplify_px: float = 0.0,
    dense: bool = False,
    origin: tuple[int, int] = (0, 0),
    frame: tuple[int, int] | None = None,
) -> list[Contour]:
    """Outer contours of the regions of a 2-D boolean/uint8 mask, largest first.

    ``simplify_px`` is the Douglas-Peucker tolerance in the mask's pixels (0: off);
    area and centroid are always those of the unsimplified contour. ``dense`` keeps
    every boundary pixel (``CHAIN_APPROX_NONE``, as the IMAGE preprocessor returns);
    otherwise runs of collinear points are merged, which draws the same polygon.
    ``mask`` may be a crop: ``origin`` is its top-left (x, y) in the label map and
    ``frame`` the label map's (width, height), which coordinates are normalised by.
    """
    height, width = mask.shape if frame is None else (frame[1], frame[0])
    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    method = cv2.CHAIN_APPROX_NONE if dense else cv2.CHAIN_APPROX_SIMPLE
    found, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, method, offset=origin)
    inverse_scale = np.array([1.0 / width, 1.0 / height])
    pixel_area = float(width * height)
    contours = []
    # A photo's map has hundreds of contours: plain floats, no per-contour arrays but one.
    for points in found:
        moments = cv2.moments(points)
        enclosed = float(moments["m00"])
        if enclosed > 0:
            cx, cy = moments["m10"] / enclosed, moments["m01"] / enclosed
        else:  # a point or a line: it encloses nothing
            cx, cy = (float(v) for v in points.reshape(-1, 2).mean(axis=0))
        if simplify_px > 0:
            points = cv2.approxPolyDP(points, simplify_px, True)
        contours.append(
            Contour(
                coordinates=(points.reshape(-1, 2) + 0.5) * inverse_scale,
                area=abs(enclosed) / pixel_area,
                centroid=((cx + 0.5) / width, (cy + 0.5) / height),
            )
        )
    contours.sort(key=lambda contour: -contour.area)
    return contours


def class_contours(
    labels: np.ndarray,
    names: Sequence[str],
    *,
    original_size: tuple[int, int] | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    max_classes: int | None = None,
    dense: bool = False,
) -> list[ClassContours]:
    """Contours of every class present in a label map, largest class first.

    ``labels`` is the server's small label map; ``original_size`` (width, height)
    the image's size (default: the map's own). ``min_area`` drops contours
    enclosing less than this fraction of the image (a class left with none is
    dropped); ``simplify`` is a Douglas-Peucker tolerance in pixels of the
    original image (0: off); ``max_classes`` keeps that many classes, after
    ``min_area``.
    """
    if labels.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {labels.shape}")
    if min_area < 0 or simplify < 0 or (max_classes is not None and max_classes < 0):
        raise ValueError("min_area, simplify and max_classes are non-negative")
    mask_h, mask_w = labels.shape
    width, height = original_size or (mask_w, mask_h)
    pixels = class_pixels(labels, width, height)
    # One tolerance for both axes: the geometric mean of the two scale factors.
    simplify_px = simplify * math.sqrt((mask_w * mask_h) / (width * height))
    boxes = class_boxes(labels)
    result: list[ClassContours] = []
    for class_id in pixels.ranked():
        if max_classes is not None and len(result) >= max_classes:
            break
        contours = [
            contour
            for contour in class_region_contours(
                labels, class_id, boxes, simplify_px=simplify_px, dense=dense
            )
            if contour.area >= min_area
        ]
        if not contours:
            continue
        result.append(
            ClassContours(
                id=class_id,
                name=class_name(names, class_id),
                area=pixels.area(class_id),
                centroid=pixels.centroid(class_id),
                contours=contours,
            )
        )
    return result


def class_boxes(labels: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """Each present class's bounding box (x0, y0, x1, y1), ends exclusive.

    Two bincounts over the map; contour search then scans only each class's box,
    which for a photo's dozens of classes is a fraction of the map each.
    """
    height, width = labels.shape
    if labels.size == 0:
        return {}
    classes = int(labels.max()) + 1
    flat = labels.ravel().astype(np.int64)
    in_row = np.bincount(np.repeat(np.arange(height), width) * classes + flat,
                         minlength=height * classes).reshape(height, classes) > 0  # fmt: skip
    in_col = np.bincount(np.tile(np.arange(width), height) * classes + flat,
                         minlength=width * classes).reshape(width, classes) > 0  # fmt: skip
    boxes = {}
    for class_id in map(int, np.flatnonzero(in_row.any(axis=0))):
        ys = np.flatnonzero(in_row[:, class_id])
        xs = np.flatnonzero(in_col[:, class_id])
        boxes[class_id] = (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)
    return boxes


def class_region_contours(
    labels: np.ndarray,
    class_id: int,
    boxes: dict[int, tuple[int, int, int, int]],
    *,
    simplify_px: float = 0.0,
    dense: bool = False,
) -> list[Contour]:
    """:func:`region_contours` of one class of a label map, searched within its box."""
    if class_id not in boxes:
        return []
    x0, y0, x1, y1 = boxes[class_id]
    height, width = labels.shape
    return region_contours(
        labels[y0:y1, x0:x1] == class_id,
        simplify_px=simplify_px,
        dense=dense,
        origin=(x0, y0),
        frame=(width, height),
    )


def class_name(names: Sequence[str], class_id: int) -> str:
    """The model's name for a class id (``class_<id>`` beyond its list, as the class table)."""
    return names[class_id] if class_id < len(names) else f"class_{class_id}"
