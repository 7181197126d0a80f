"""Encode time and peak memory of each output encoder for a 6000x4000 photo.

The label map is what the server holds for such a photo (627x418, the bounded
size of a 640-pixel model; classes as smooth blobs, as a real segmentation
looks), and the overlay is made at its configured maximum from a photo decoded
near that size (what the gateway hands it), and once from a larger decode for
comparison. Times are medians of ``--repeat`` runs (wall and CPU time: on a
shared machine the CPU time is the steadier figure); peak memory is Python's
(tracemalloc, numpy buffers included) over one run. Prints JSON.

    python -m benchmarks.encoders [--repeat 7] [--max-pixels 2000000]

Goal (issue 15): contours + overlay of a 6000x4000 photo add at most 150 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from deployments.adapters.labels import ADE20K
from deployments.pipeline.contours import class_contours
from deployments.pipeline.image_contract import IMAGE_MMSEMSEG_RULES, segments
from deployments.pipeline.imaging import fit_within, resize_labels
from deployments.pipeline.outputs import class_table, encode_label_png
from deployments.pipeline.overlay import overlay_image
from deployments.pipeline.palette import resolve_palette

ORIGINAL = (6000, 4000)
MASK = (627, 418)
GOAL_MS = 150.0


def blob_labels(width: int, height: int, classes: int = 24, seed: int = 0) -> np.ndarray:
    """A label map of smooth regions: argmax over blurred random class scores."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((classes, max(2, height // 40), max(2, width // 40))).astype(np.float32)
    scores = np.stack(
        [cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse]
    )
    return np.argmax(scores, axis=0).astype(np.uint8)


def photo(width: int, height: int, seed: int = 1) -> np.ndarray:
    """A photo-like picture: smooth colour fields plus sensor noise (JPEG/PNG cost is realistic)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 60), max(2, width // 60), 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-6, 7, smooth.shape, dtype=np.int16)
    return np.clip(smooth.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def measure(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()  # warm caches and lazy imports
    times, cpu_times = [], []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - started) * 1000)
        cpu_times.append((time.process_time() - cpu_started) * 1000)
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        # CPU time of this process: what the wall time would be on an idle core
        # (more than it when OpenCV's resize/encode use several threads).
        "cpu_median_ms": round(statistics.median(cpu_times), 2),
        "peak_mib": round(peak / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--max-pixels", type=int, default=2_000_000, help="overlay maximum")
    args = parser.parse_args()

    labels = blob_labels(*MASK)
    palette = resolve_palette(len(ADE20K), dataset="ade20k")
    out_w, out_h = fit_within(*ORIGINAL, args.max_pixels)
    near = photo(out_w, out_h)  # decoded near the overlay's size
    half = photo(ORIGINAL[0] // 2, ORIGINAL[1] // 2)  # a JPEG draft decode at 1/2

    def contours_json() -> str:
        found = class_contours(labels, ADE20K, original_size=ORIGINAL)
        return json.dumps([c.to_dict() for c in found])

    def overlay(source: np.ndarray, fmt: str, legend: bool) -> Callable[[], bytes]:
        return lambda: overlay_image(
            source, labels, palette, alpha=0.5, fmt=fmt, max_pixels=args.max_pixels,
            size=ORIGINAL, legend_names=ADE20K if legend else None,
        )  # fmt: skip

    from deployments.pipeline.rle import class_rle

    results: dict[str, dict[str, float]] = {
        "classes": measure(lambda: class_table(labels, *ORIGINAL, ADE20K), args.repeat),
        "contours": measure(
            lambda: class_contours(labels, ADE20K, original_size=ORIGINAL), args.repeat
        ),
        "contours+json": measure(contours_json, args.repeat),
        "contours_simplify_2px+json": measure(
            lambda: json.dumps(
                [
                    c.to_dict()
                    for c in class_contours(labels, ADE20K, original_size=ORIGINAL, simplify=2.0)
                ]
            ),
            args.repeat,
        ),
        "image_segments+json": measure(
            lambda: json.dumps(segments(labels, ADE20K, ORIGINAL, rules=IMAGE_MMSEMSEG_RULES)),
            args.repeat,
        ),
        "rle+json": measure(
            lambda: json.dumps([r.to_dict() for r in class_rle(labels, ADE20K)]), args.repeat
        ),
        "overlay_jpeg": measure(overlay(near, "jpeg", False), args.repeat),
        "overlay_jpeg_legend": measure(overlay(near, "jpeg", True), args.repeat),
        "overlay_png_legend": measure(overlay(near, "png", True), args.repeat),
        "overlay_jpeg_legend_from_half_decode": measure(overlay(half, "jpeg", True), args.repeat),
        "mask_png_original_size": measure(
            lambda: encode_label_png(resize_labels(labels, *ORIGINAL)), args.repeat
        ),
    }
    contours_plus_overlay = (
        results["contours+json"]["median_ms"] + results["overlay_jpeg_legend"]["median_ms"]
    )
    print(
        json.dumps(
            {
                "original": list(ORIGINAL),
                "mask": list(MASK),
                "classes_present": len(np.unique(labels)),
                "overlay_size": [out_w, out_h],
                "overlay_max_pixels": args.max_pixels,
                "encoders": results,
                "contours_plus_overlay_ms": round(contours_plus_overlay, 2),
                "goal_ms": GOAL_MS,
                "goal_met": contours_plus_overlay <= GOAL_MS,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
