"""Per-request options, parsed and validated once for every transport.

HTTP query parameters and gRPC request fields both arrive as optional strings
or numbers; :func:`parse_options` turns them into :class:`SegmentOptions` or
raises :class:`InvalidParameter` (422 / INVALID_ARGUMENT) with the same
message on both transports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deployments.pipeline.errors import InvalidParameter

#: Every output a client may ask for (``outputs=``).
OUTPUTS = ("classes", "mask", "contours", "rle", "overlay")
#: What a request without ``outputs`` gets: the class table and the label PNG.
DEFAULT_OUTPUTS = frozenset({"classes", "mask"})
#: The IMAGE contract's segments: asked for by ``protocols/image.py`` only, never by a
#: client (``parse_options`` does not accept it).
IMAGE_SEGMENTS = "image_segments"
MASK_SIZES = ("original", "model")
#: Overlay encodings by the name a request uses (``jpg`` is ``jpeg``).
OVERLAY_FORMATS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}
AUTO_MODEL = "auto"
#: An output beside ``classes`` and ``mask``: the label map itself at the mask size, kept
#: on ``SegmentResult.labels`` (the Open Inference Protocol's ``labels`` tensor) without a
#: PNG round trip. Not a ``/v1`` option: protocols add it to the options.
LABEL_MAP_OUTPUT = "labels"
#: A budget longer than this is a client bug, not a deadline.
MAX_BUDGET_MS = 600_000.0
#: Simplification tolerances beyond this (pixels) would reduce any photo to a point.
MAX_SIMPLIFY_PX = 10_000.0
#: More classes than any label map holds (ids are at most 16-bit).
MAX_CLASSES = 65_536


@dataclass(frozen=True)
class DrawOptions:
    """How contours and the overlay are made; None: the configured default
    (``gateway.outputs``), which the service fills in."""

    #: Contours enclosing less than this fraction of the image are left out.
    min_area: float | None = None
    #: Douglas-Peucker tolerance in pixels of the original image (0: off).
    simplify: float | None = None
    #: Contours of at most this many classes, largest first.
    max_classes: int | None = None
    #: Weight of the class colours over the photo, 0..1.
    alpha: float | None = None
    #: "jpeg" or "png".
    overlay_format: str | None = None
    #: Draw a legend of the classes present.
    legend: bool | None = None


@dataclass(frozen=True)
class SegmentOptions:
    model: str = AUTO_MODEL
    budget_ms: float | None = None
    outputs: frozenset[str] = DEFAULT_OUTPUTS
    mask_size: str = "original"
    #: Reject at once (504) when no model is predicted to finish within the budget.
    strict: bool = False
    #: The budget is only the caller's deadline (a gRPC call's timeout): it is kept,
    #: but ``model=auto`` stays the default model instead of choosing by budget.
    budget_is_deadline: bool = False
    #: Options of the contours and overlay outputs.
    draw: DrawOptions = DrawOptions()

    def deadline(self, started: float) -> float | None:
        """Absolute ``time.time()`` by which the answer is due, if there is a budget."""
        return None if self.budget_ms is None else started + self.budget_ms / 1000.0


def parse_options(
    model: str | None = None,
    budget_ms: str | float | None = None,
    outputs: str | None = None,
    mask_size: str | None = None,
    strict: str | bool | None = None,
    *,
    min_area: str | float | None = None,
    simplify: str | float | None = None,
    max_classes: str | int | None = None,
    alpha: str | float | None = None,
    overlay_format: str | None = None,
    legend: str | bool | None = None,
) -> SegmentOptions:
    return SegmentOptions(
        model=_parse_model(model),
        budget_ms=_parse_budget(budget_ms),
        outputs=_parse_outputs(outputs),
        mask_size=_parse_mask_size(mask_size),
        strict=_parse_bool("strict", strict) or False,
        draw=DrawOptions(
            min_area=_parse_number("min_area", min_area, low=0.0, high=1.0),
            simplify=_parse_number("simplify", simplify, low=0.0, high=MAX_SIMPLIFY_PX),
            max_classes=_parse_count("max_classes", max_classes, low=1, high=MAX_CLASSES),
            alpha=_parse_number("alpha", alpha, low=0.0, high=1.0),
            overlay_format=_parse_overlay_format(overlay_format),
            legend=_parse_bool("legend", legend),
        ),
    )


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _parse_bool(name: str, value: str | bool | None) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None or value.strip() == "":
        return None
    word = value.strip().lower()
    if word in _FALSE:
        return False
    if word in _TRUE:
        return True
    raise InvalidParameter(f"{name} must be true or false, got {value!r}")


def _parse_number(name: str, value: str | float | None, *, low: float, high: float) -> float | None:
    if _blank(value):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidParameter(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidParameter(f"{name} must be between {low:g} and {high:g}, got {number:g}")
    return number


def _parse_count(name: str, value: str | int | None, *, low: int, high: int) -> int | None:
    if _blank(value):
        return None
    try:
        count = int(str(value).strip())
    except ValueError:
        raise InvalidParameter(f"{name} must be a whole number, got {value!r}") from None
    if not low <= count <= high:
        raise InvalidParameter(f"{name} must be between {low} and {high}, got {count}")
    return count


def _parse_overlay_format(value: str | None) -> str | None:
    if value is None or value.strip() == "":
        return None
    fmt = OVERLAY_FORMATS.get(value.strip().lower())
    if fmt is None:
        raise InvalidParameter(
            f"overlay_format must be one of {', '.join(OVERLAY_FORMATS)}, got {value!r}"
        )
    return fmt


def _parse_model(value: str | None) -> str:
    if value is None or value.strip() == "":
        return AUTO_MODEL
    return value.strip()


def _parse_budget(value: str | float | None) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        budget = float(value)
    except (TypeError, ValueError):
        raise InvalidParameter(
            f"budget_ms must be a number of milliseconds, got {value!r}"
        ) from None
    # The number, not its spelling: HTTP sends "-5", gRPC -5.0; the message is the same.
    if not math.isfinite(budget) or budget <= 0:
        raise InvalidParameter(f"budget_ms must be a positive number, got {budget:g}")
    if budget > MAX_BUDGET_MS:
        raise InvalidParameter(f"budget_ms must be at most {MAX_BUDGET_MS:.0f} ms, got {budget:g}")
    return budget


def _parse_outputs(value: str | None) -> frozenset[str]:
    if value is None or value.strip() == "":
        return DEFAULT_OUTPUTS
    items = {item.strip() for item in value.split(",") if item.strip()}
    unknown = sorted(items - set(OUTPUTS))
    if unknown or not items:
        raise InvalidParameter(
            f"unknown outputs {', '.join(map(repr, unknown)) or repr(value)}; "
            f"choose from {', '.join(OUTPUTS)} (comma-separated)"
        )
    return frozenset(items)


def _parse_mask_size(value: str | None) -> str:
    if value is None or value.strip() == "":
        return "original"
    if value.strip() not in MASK_SIZES:
        raise InvalidParameter(f"mask_size must be one of {', '.join(MASK_SIZES)}, got {value!r}")
    return value.strip()
