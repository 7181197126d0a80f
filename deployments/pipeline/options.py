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

OUTPUTS = ("classes", "mask")
MASK_SIZES = ("original", "model")
AUTO_MODEL = "auto"
#: A budget longer than this is a client bug, not a deadline.
MAX_BUDGET_MS = 600_000.0


@dataclass(frozen=True)
class SegmentOptions:
    model: str = AUTO_MODEL
    budget_ms: float | None = None
    outputs: frozenset[str] = frozenset(OUTPUTS)
    mask_size: str = "original"
    #: Reject at once (504) when no model is predicted to finish within the budget.
    strict: bool = False
    #: The budget is only the caller's deadline (a gRPC call's timeout): it is kept,
    #: but ``model=auto`` stays the default model instead of choosing by budget.
    budget_is_deadline: bool = False

    def deadline(self, started: float) -> float | None:
        """Absolute ``time.time()`` by which the answer is due, if there is a budget."""
        return None if self.budget_ms is None else started + self.budget_ms / 1000.0


def parse_options(
    model: str | None = None,
    budget_ms: str | float | None = None,
    outputs: str | None = None,
    mask_size: str | None = None,
    strict: str | bool | None = None,
) -> SegmentOptions:
    return SegmentOptions(
        model=_parse_model(model),
        budget_ms=_parse_budget(budget_ms),
        outputs=_parse_outputs(outputs),
        mask_size=_parse_mask_size(mask_size),
        strict=_parse_strict(strict),
    )


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _parse_strict(value: str | bool | None) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    word = value.strip().lower()
    if word == "" or word in _FALSE:
        return False
    if word in _TRUE:
        return True
    raise InvalidParameter(f"strict must be true or false, got {value!r}")


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
        return frozenset(OUTPUTS)
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
