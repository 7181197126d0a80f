"""The budget policy, pure: which model answers, given each candidate's prediction.

- No budget: the configured default model (``chosen_by="default"``).
- A budget: the highest-quality model predicted to finish within it without
  making requests already queued there miss theirs (``"budget"``); ties go to the
  faster one.
- Nothing fits: the fastest model, reported as not meeting the budget
  (``"fastest"``), unless the request is strict, which is rejected at once with
  :class:`DeadlineExceeded` and never queued.
- An explicit ``model=<name>`` skips selection but keeps the deadline
  (``"explicit"``); strict rejects it too when it is predicted to miss.

The predictions come from :class:`deployments.pipeline.routing.Router`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deployments.pipeline.errors import DeadlineExceeded


@dataclass(frozen=True)
class Candidate:
    name: str
    quality: float
    predicted_ms: float
    #: Sending the request there is predicted to make requests already queued on that
    #: model miss budgets they would otherwise meet (it would join and lengthen their batch).
    harms: bool = False


@dataclass(frozen=True)
class RouteChoice:
    name: str
    predicted_ms: float
    #: The prediction says it finishes within the budget (None without a budget).
    fits: bool | None
    #: "default" | "budget" | "fastest" | "explicit"
    chosen_by: str


def choose(
    candidates: Sequence[Candidate],
    budget_ms: float | None,
    default: str,
    strict: bool = False,
    upgrade: bool = True,
) -> RouteChoice:
    """Pick among ``candidates`` (the models ``model=auto`` may use, default included).

    ``upgrade=False`` (shared compute that is already busy) takes the fastest model
    that fits rather than the best: a slow model would delay the requests behind it.
    """
    by_name = {c.name: c for c in candidates}
    if default not in by_name and (budget_ms is None or not candidates):
        raise ValueError(f"default model {default!r} is not a candidate")
    if budget_ms is None:
        chosen = by_name[default]
        return RouteChoice(chosen.name, chosen.predicted_ms, None, "default")
    fitting = [c for c in candidates if c.predicted_ms <= budget_ms and not c.harms]
    if fitting:
        if upgrade:
            best = max(fitting, key=lambda c: (c.quality, -c.predicted_ms))
        else:
            best = min(fitting, key=lambda c: (c.predicted_ms, -c.quality))
        return RouteChoice(best.name, best.predicted_ms, True, "budget")
    fastest = min(candidates, key=lambda c: (c.predicted_ms, -c.quality))
    if strict:
        raise DeadlineExceeded(
            f"no model can answer within budget_ms={budget_ms:g}: the fastest, "
            f"{fastest.name!r}, is predicted to take {fastest.predicted_ms:.0f} ms "
            "(strict=true: rejected without queueing)",
            code="budget_unreachable",
        )
    return RouteChoice(fastest.name, fastest.predicted_ms, False, "fastest")


def explicit(name: str, predicted_ms: float, budget_ms: float | None, strict: bool) -> RouteChoice:
    """A model the request named: no selection, but the budget still holds."""
    if budget_ms is None:
        return RouteChoice(name, predicted_ms, None, "explicit")
    fits = predicted_ms <= budget_ms
    if strict and not fits:
        raise DeadlineExceeded(
            f"model {name!r} is predicted to take {predicted_ms:.0f} ms, over "
            f"budget_ms={budget_ms:g} (strict=true: rejected without queueing)",
            code="budget_unreachable",
        )
    return RouteChoice(name, predicted_ms, fits, "explicit")
