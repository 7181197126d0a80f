"""Online latency models: how long a model's batch takes, and the gateway's own work.

A replica's batch time is close to affine in the pixels it holds (a fixed part
for launching the batch, a part per pixel), so each model gets a
:class:`LinearLatency` fitted by exponentially weighted least squares on the
batches it really ran (seeded by a warm-up at replica start). Recent batches
weigh most, so the fit follows a machine that gets busier or a GPU that warms
up. Predictions add a margin of a few residual standard deviations: the policy
wants "almost surely done by", not "on average done by".

Everything here is pure Python and Ray-free (unit-tested with hypothesis).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from deployments.contract import LatencySample

__all__ = ["LatencySample", "LinearLatency", "QueueState", "queue_wait_ms"]


class LinearLatency:
    """``ms ~ fixed + per_pixel * pixels``, weighted least squares with decay.

    ``half_life`` is in samples: a sample that many observations old weighs half.
    ``prior`` samples (weight ``prior_weight`` each, decaying like the rest)
    keep the fit defined before real data arrives.
    """

    def __init__(
        self,
        half_life: float = 50.0,
        prior: Iterable[LatencySample] = (),
        prior_weight: float = 1.0,
    ) -> None:
        if half_life <= 0:
            raise ValueError("half_life must be positive")
        self.decay = 0.5 ** (1.0 / half_life)
        self._lock = threading.Lock()
        # Weighted sums for the normal equations and the residual variance.
        self._w = self._x = self._y = self._xx = self._xy = self._yy = 0.0
        # The same sums over observed samples only: the residual spread comes from them
        # once there are two (a warm-up batch timed during a busy start-up must seed the
        # line, not inflate every later margin).
        self._real = [0.0] * 6
        self.samples = 0
        for sample in prior:
            self._add(sample.pixels, sample.ms, prior_weight)

    def observe(self, pixels: float, ms: float) -> None:
        if not (math.isfinite(pixels) and math.isfinite(ms)) or pixels < 0 or ms < 0:
            return  # a clock hiccup must not poison the fit
        with self._lock:
            self._add(pixels, ms, 1.0)
            d = self.decay
            real = self._real
            for i, value in enumerate((1.0, pixels, ms, pixels * pixels, pixels * ms, ms * ms)):
                real[i] = real[i] * d + value
            self.samples += 1

    def _add(self, x: float, y: float, weight: float) -> None:
        d = self.decay
        self._w = self._w * d + weight
        self._x = self._x * d + weight * x
        self._y = self._y * d + weight * y
        self._xx = self._xx * d + weight * x * x
        self._xy = self._xy * d + weight * x * y
        self._yy = self._yy * d + weight * y * y

    def coefficients(self) -> tuple[float, float, float]:
        """(fixed_ms, ms_per_pixel, residual_std_ms); never negative."""
        with self._lock:
            w, x, y, xx, xy, yy = self._w, self._x, self._y, self._xx, self._xy, self._yy
            real, samples = list(self._real), self.samples
        fixed, slope, std = self._fit(w, x, y, xx, xy, yy)
        if samples >= 2:
            rw, rx, ry, rxx, rxy, ryy = real
            squares = (
                ryy - 2 * fixed * ry - 2 * slope * rxy
                + fixed * fixed * rw + 2 * fixed * slope * rx + slope * slope * rxx
            )  # fmt: skip
            std = math.sqrt(max(0.0, squares / rw))
        return fixed, slope, std

    @staticmethod
    def _fit(
        w: float, x: float, y: float, xx: float, xy: float, yy: float
    ) -> tuple[float, float, float]:
        if w <= 0:
            return 0.0, 0.0, 0.0
        mean_x, mean_y = x / w, y / w
        var_x = xx / w - mean_x * mean_x
        cov = xy / w - mean_x * mean_y
        var_y = max(0.0, yy / w - mean_y * mean_y)
        if var_x <= 1e-9 * max(1.0, mean_x * mean_x):
            # One size seen so far: all of it is "per pixel" (scales with bigger inputs).
            slope = mean_y / mean_x if mean_x > 0 else 0.0
            fixed = 0.0 if mean_x > 0 else mean_y
            return fixed, slope, math.sqrt(var_y)
        slope = max(0.0, cov / var_x)
        fixed = mean_y - slope * mean_x
        if fixed < 0:  # keep the line through non-negative times
            fixed, slope = 0.0, (xy / xx if xx > 0 else 0.0)
        residual = max(0.0, var_y - slope * cov) if slope > 0 else var_y
        return fixed, max(0.0, slope), math.sqrt(residual)

    def mean_ms(self, pixels: float) -> float:
        fixed, slope, _ = self.coefficients()
        return fixed + slope * max(0.0, pixels)

    def predict_ms(self, pixels: float, margin_sigmas: float) -> float:
        """A time the work is unlikely to exceed: the fit plus ``margin_sigmas`` std devs."""
        fixed, slope, std = self.coefficients()
        return fixed + slope * max(0.0, pixels) + margin_sigmas * std

    def to_dict(self) -> dict[str, float | int]:
        fixed, slope, std = self.coefficients()
        return {
            "fixed_ms": round(fixed, 2),
            "ms_per_megapixel": round(slope * 1e6, 2),
            "residual_std_ms": round(std, 2),
            "samples": self.samples,
        }


@dataclass
class QueueState:
    """What one gateway has sent to a model and not yet had back."""

    requests: int = 0
    pixels: int = 0


def queue_wait_ms(
    model: LinearLatency,
    queue: QueueState,
    replicas: int,
    max_batch_size: int,
    max_batch_pixels: int,
) -> float:
    """Expected time before a new request's batch can start, from the work ahead of it.

    The requests in flight drain as full batches shared among the replicas: each
    batch costs the fixed part once and the per-pixel part for its pixels.
    """
    if queue.requests <= 0:
        return 0.0
    fixed, slope, _ = model.coefficients()
    batches = max(
        math.ceil(queue.requests / max(1, max_batch_size)),
        math.ceil(queue.pixels / max(1, max_batch_pixels)),
    )
    return (batches * fixed + slope * queue.pixels) / max(1, replicas)
