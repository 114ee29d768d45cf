"""Metric objectives: whether an evaluation's metrics meet an environment's objectives.

Pure: :func:`check` takes the objectives (``configs/environments.yaml``'s ``objectives``, or
the one ``thresholds`` means), the candidate's metrics and the champion's, and returns one
:class:`Verdict` per objective; nothing is read, written or guessed. Rules, per objective:

- the metric must be among the candidate's metrics, as a finite number; else it fails;
- ``bound``: the value must be ``>=`` it when maximized, ``<=`` when minimized;
- ``max_regression``: the value may be worse than the champion's by at most this much;
- ``max_regression_pct``: ... by at most this percentage of the champion's value (its
  magnitude, so negative values work too);
- worsening is only checked against a champion that has the metric; with no champion (a first
  release) or none with that metric, only the bound applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from workbench.config import Direction, Objective, Thresholds

__all__ = ["Verdict", "check", "from_thresholds"]


@dataclass(frozen=True)
class Verdict:
    """One objective judged: the metric, what was asked, what was measured, and why it failed."""

    metric: str
    direction: Direction
    bound: float | None
    max_regression: float | None
    max_regression_pct: float | None
    value: float | None  # None: the evaluation did not output the metric as a number
    champion: float | None  # the champion's value; None: no champion, or it lacks the metric
    passed: bool
    reasons: tuple[str, ...]  # each rule it broke, in words; empty when passed
    message: str  # one line: the reasons, or what it met

    def as_dict(self) -> dict[str, Any]:
        """Plain values, ready to glue as a scrap."""
        found = asdict(self)
        found["reasons"] = list(self.reasons)
        return found


def from_thresholds(min_score: float, max_regression: float = 0.0) -> Objective:
    """The objective ``thresholds: {min_score, max_regression}`` means: ``score`` maximized,
    at least ``min_score``, at most ``max_regression`` below the champion's."""
    return Thresholds(min_score=min_score, max_regression=max_regression).as_objective()


def check(objectives: Sequence[Objective | Mapping[str, Any]], metrics: Mapping[str, Any],
          champion: Mapping[str, Any] | None = None) -> list[Verdict]:
    """Judge ``metrics`` (the candidate's, by name) against each objective, comparing with
    ``champion`` (the champion's metrics by name; empty or None: there is no champion). An
    objective may be an :class:`~workbench.config.Objective` or its mapping (as a notebook
    receives it); a mapping that is no objective is a ``ValueError`` naming it."""
    return [_judge(_objective(item, index), metrics, champion or {})
            for index, item in enumerate(objectives)]


def _objective(item: Objective | Mapping[str, Any], index: int) -> Objective:
    if isinstance(item, Objective):
        return item
    try:
        return Objective.model_validate(dict(item))
    except (ValidationError, TypeError, ValueError) as exc:
        raise ValueError(f"objectives[{index}] is not an objective ({item!r}): {exc}") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: float) -> str:
    """A number short enough to read in a sentence: 66.0, 0.3812, 1.2e-05."""
    if value != 0 and (abs(value) < 0.001 or abs(value) >= 1e6):
        return f"{value:.4g}"
    text = f"{value:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _judge(objective: Objective, metrics: Mapping[str, Any],
           champion: Mapping[str, Any]) -> Verdict:
    name, maximize = objective.metric, objective.direction == "maximize"
    value = _number(metrics.get(name))
    other = _number(champion.get(name)) if champion else None
    reasons: list[str] = []
    if value is None:
        if name not in metrics:
            reasons.append(f"metric {name!r} is not among the evaluation's metrics "
                           f"({', '.join(sorted(map(str, metrics))) or 'none'})")
        else:
            reasons.append(f"metric {name!r} is not a finite number (got {metrics[name]!r})")
        return _verdict(objective, None, other, reasons, "")
    bound = objective.bound
    if bound is not None:
        if maximize and value < bound:
            reasons.append(f"{name} {_fmt(value)} is below the bound {_fmt(bound)}")
        elif not maximize and value > bound:
            reasons.append(f"{name} {_fmt(value)} is above the bound {_fmt(bound)}")
    if other is not None:
        worse = other - value if maximize else value - other  # > 0: worse than the champion
        allowed = objective.max_regression
        # the comparison `thresholds` always made: value < champion - allowed (maximize)
        if allowed is not None and (value < other - allowed if maximize
                                    else value > other + allowed):
            reasons.append(f"{name} {_fmt(value)} is worse than the champion's {_fmt(other)} "
                           f"by {_fmt(worse)} (allowed {_fmt(allowed)})")
        pct = objective.max_regression_pct
        if pct is not None:
            slack = abs(other) * pct / 100
            if (value < other - slack) if maximize else (value > other + slack):
                by = (f"{_fmt(worse / abs(other) * 100)}%" if other
                      else f"{_fmt(worse)}, any percentage of a champion's 0 being 0")
                reasons.append(f"{name} {_fmt(value)} is worse than the champion's "
                               f"{_fmt(other)} by {by} (allowed {_fmt(pct)}%)")
    met: list[str] = []
    if bound is not None:
        met.append(f"bound {'>=' if maximize else '<='} {_fmt(bound)}")
    if objective.max_regression is not None or objective.max_regression_pct is not None:
        met.append(f"champion's {_fmt(other)}" if other is not None
                   else "no champion value to compare with")
    return _verdict(objective, value, other, reasons,
                    f"{name} {_fmt(value)} meets its objective ({objective.direction}; "
                    f"{', '.join(met)})")


def _verdict(objective: Objective, value: float | None, other: float | None,
             reasons: list[str], met: str) -> Verdict:
    return Verdict(metric=objective.metric, direction=objective.direction,
                   bound=objective.bound, max_regression=objective.max_regression,
                   max_regression_pct=objective.max_regression_pct, value=value,
                   champion=other, passed=not reasons, reasons=tuple(reasons),
                   message="; ".join(reasons) if reasons else met)
