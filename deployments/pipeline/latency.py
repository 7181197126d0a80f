"""Online latency models: how long a model's batch takes, and the gateway's own work.

A replica's batch time is close to affine in the pixels it holds (a fixed part
for launching the batch, a part per pixel), so each model gets a
:class:`LinearLatency` fitted by exponentially weighted least squares on the
batches it really ran (seeded by a warm-up at replica start). Recent batches
weigh most, so the fit follows a machine that gets busier or a GPU that warms
up. The policy wants "almost surely done by", not "on average done by": a
:class:`Calibration` per model scales predicted round trips by a high quantile of
how late earlier ones came back (before it has enough, predictions add a few
residual standard deviations instead).

Everything here is pure Python and Ray-free (unit-tested with hypothesis).
"""

from __future__ import annotations

import collections
import math
import statistics
import threading
from collections.abc import Iterable

from deployments.contract import LatencySample

__all__ = ["Calibration", "LatencySample", "LinearLatency"]


class LinearLatency:
    """``ms ~ fixed + per_pixel * pixels``, weighted least squares with decay.

    ``half_life`` is in samples: a sample that many observations old weighs half.
    ``prior`` samples (weight ``prior_weight`` each, decaying like the rest) keep the
    fit defined before real data arrives. Once samples are observed, the prior's line
    is rescaled to their level before it joins the fit: it contributes its *shape*
    (how time grows with pixels) but not its level. A warm-up timed while every
    replica of the node was loading at once is slow across the board; unscaled, its
    batch of two would set the slope for as long as real batches all hold one image
    (the line must pass through the only point at two images, whatever its weight).
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
        # Weighted sums (w, x, y, xx, xy, yy) of the prior and of the observed samples: the
        # residual spread comes from the observed ones once there are two.
        self._prior = [0.0] * 6
        self._real = [0.0] * 6
        self.samples = 0
        for sample in prior:
            _accumulate(self._prior, sample.pixels, sample.ms, prior_weight, 1.0)
        self._prior_line = _fit(*self._prior)[:2]

    def observe(self, pixels: float, ms: float) -> None:
        if not (math.isfinite(pixels) and math.isfinite(ms)) or pixels < 0 or ms < 0:
            return  # a clock hiccup must not poison the fit
        with self._lock:
            _accumulate(self._real, pixels, ms, 1.0, self.decay)
            self._prior = [v * self.decay for v in self._prior]
            self.samples += 1

    def coefficients(self) -> tuple[float, float, float]:
        """(fixed_ms, ms_per_pixel, residual_std_ms); never negative."""
        with self._lock:
            prior, real, samples = list(self._prior), list(self._real), self.samples
        scale = 1.0
        fixed_p, slope_p = self._prior_line
        expected = fixed_p * real[0] + slope_p * real[1]  # the prior line at the real samples
        if samples and prior[0] > 0 and expected > 0:
            scale = real[2] / expected
        sums = [
            r + p * factor
            for r, p, factor in zip(
                real, prior, (1, 1, scale, 1, scale, scale * scale), strict=True
            )
        ]
        fixed, slope, std = _fit(*sums)
        if samples >= 2:
            rw, rx, ry, rxx, rxy, ryy = real
            squares = (
                ryy - 2 * fixed * ry - 2 * slope * rxy
                + fixed * fixed * rw + 2 * fixed * slope * rx + slope * slope * rxx
            )  # fmt: skip
            std = math.sqrt(max(0.0, squares / rw))
        return fixed, slope, std

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


def _accumulate(sums: list[float], x: float, y: float, weight: float, decay: float) -> None:
    """Decay the weighted sums (w, x, y, xx, xy, yy), then add one sample."""
    for i, value in enumerate((1.0, x, y, x * x, x * y, y * y)):
        sums[i] = sums[i] * decay + weight * value


def _fit(
    w: float, x: float, y: float, xx: float, xy: float, yy: float
) -> tuple[float, float, float]:
    """Weighted least squares from the sums: (fixed, slope, residual std), never negative."""
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


class Calibration:
    """How far off a model's round-trip predictions have been: a quantile of actual/predicted.

    Each request to the model records the ratio of its measured round trip to the one
    predicted when it was sent (queue ahead of it, its batch, the transport). A high
    ``quantile`` of the last ``window`` ratios scales later predictions: if 98 % of
    requests came back within 1.3x their prediction, ``1.3 x prediction`` is a time a
    request will meet about 98 % of the time, whatever made the predictions wrong (a
    busy machine, batches formed otherwise than assumed, work from other gateways). A
    prediction that was too cautious scales down the same way.

    The quantile is the larger of two estimates: log-normal (the ratios' log mean plus
    the normal quantile of their log spread, widened for the sample size: usable from
    ``min_samples``) and, once there are enough ratios for it to mean something
    (``1 / (1 - quantile)``), the empirical one (which sees heavy tails the log-normal
    misses). Below ``min_samples`` ratios younger than ``max_age_s`` there is no factor
    (the router falls back to ``margin_sigmas``, or probes the model when it is idle):
    a model the router stopped choosing after a bad spell is not shut out for good.
    """

    def __init__(
        self, window: int, quantile: float, min_samples: int, max_age_s: float = math.inf
    ) -> None:
        if not 0 < quantile <= 1 or window < 1 or min_samples < 1 or max_age_s <= 0:
            raise ValueError(
                "need 0 < quantile <= 1, window >= 1, min_samples >= 1 and max_age_s > 0"
            )
        self.quantile = quantile
        self.min_samples = max(2, min_samples)
        self.max_age_s = max_age_s
        self._z = statistics.NormalDist().inv_cdf(min(quantile, 0.9999))
        self._ratios: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)

    def observe(self, predicted_ms: float, actual_ms: float, at: float = 0.0) -> None:
        """One request: predicted and measured round trip, and when (any clock, in s)."""
        if predicted_ms > 0 and math.isfinite(actual_ms) and actual_ms >= 0:
            self._ratios.append((at, min(max(actual_ms / predicted_ms, 1e-3), _MAX_RATIO)))

    def _recent(self, now: float) -> list[float]:
        while self._ratios and self._ratios[0][0] < now - self.max_age_s:
            self._ratios.popleft()
        return [ratio for _, ratio in self._ratios]

    def samples(self, now: float = 0.0) -> int:
        return len(self._recent(now))

    def factor(self, now: float = 0.0) -> float | None:
        """The ``quantile`` of actual/predicted (see the class), or None with too few
        ratios younger than ``max_age_s``."""
        ratios = self._recent(now)
        count = len(ratios)
        if count < self.min_samples:
            return None
        logs = [math.log(r) for r in ratios]
        spread = statistics.stdev(logs) * math.sqrt(1 + 1 / count)
        estimate = math.exp(statistics.fmean(logs) + self._z * spread)
        if count * (1 - self.quantile) >= 1:
            ordered = sorted(ratios)
            estimate = max(estimate, ordered[math.ceil(self.quantile * count) - 1])
        return min(max(estimate, _MIN_RATIO), _MAX_RATIO)

    def to_dict(self, now: float = 0.0) -> dict[str, float | int | None]:
        factor = self.factor(now)
        return {
            "samples": self.samples(now),
            "quantile": self.quantile,
            "factor": None if factor is None else round(factor, 3),
        }


#: Bounds on one ratio and on the factor: a single stuck request (a replica restarting) must
#: not make every later prediction hopeless, nor a burst of cache hits make them all fit.
_MAX_RATIO = 20.0
_MIN_RATIO = 0.25
