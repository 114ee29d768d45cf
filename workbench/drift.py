"""Drift: what a model was trained on (its baseline profile) against what it is asked now.

A profile holds, per input feature and for the predictions, what a later comparison needs:
numeric columns keep a sample of values (up to :data:`SAMPLE`) and their deciles; the others
keep their category frequencies. :func:`compare` judges each feature with a statistic named by
its kind, written with SciPy and NumPy rather than a drift library (two statistics do not earn
a dependency and its import time in every kernel):

- numbers: the two-sample Kolmogorov-Smirnov statistic (the largest gap between the two
  empirical distribution functions, 0 to 1);
- categories: the population stability index over the baseline's categories plus "other"
  (0 none; 0.1 to 0.25 moderate; above 0.25 large, by the usual reading).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SAMPLE = 2000  # values of a numeric column kept in a profile
PROFILE_FILE = "workbench_profile.json"  # beside the model's files: part of its digest
PREDICTIONS = "__prediction__"  # the predictions' entry in a profile
EPSILON = 1e-4  # stands for an empty bin in the stability index


def _numeric(values: Any) -> bool:
    import pandas.api.types as types

    return bool(types.is_numeric_dtype(values)) and not types.is_bool_dtype(values)


def _column_profile(values: Any, seed: int) -> dict[str, Any]:
    import numpy as np

    present = values.dropna()
    missing = float(values.isna().mean()) if len(values) else 0.0
    if _numeric(values):
        array = present.to_numpy(dtype=float)
        rng = np.random.default_rng(seed)
        sample = array if len(array) <= SAMPLE else rng.choice(array, SAMPLE, replace=False)
        deciles = np.quantile(array, np.linspace(0, 1, 11)).tolist() if len(array) else []
        return {"kind": "numeric", "rows": int(len(values)), "missing": missing,
                "mean": float(array.mean()) if len(array) else None,
                "deciles": deciles, "sample": sorted(float(v) for v in sample)}
    counts = present.astype(str).value_counts(normalize=True)
    return {"kind": "categorical", "rows": int(len(values)), "missing": missing,
            "frequencies": {str(k): float(v) for k, v in counts.items()}}


def profile(features: Any, predictions: Any = None, seed: int = 0) -> dict[str, Any]:
    """The baseline profile of a model's training inputs (a DataFrame) and, when given, of
    its predictions on them."""
    import pandas as pd

    columns = {str(name): _column_profile(features[name], seed) for name in features.columns}
    if predictions is not None:
        predicted = pd.Series(list(predictions) if not hasattr(predictions, "ndim") or
                              predictions.ndim == 1 else list(map(tuple, predictions)))
        columns[PREDICTIONS] = _column_profile(predicted, seed)
    return {"version": 1, "rows": int(len(features)), "columns": columns}


def ks_statistic(baseline: list[float], current: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (SciPy's)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(baseline, current).statistic)


def stability_index(baseline: Mapping[str, float], current: Mapping[str, float]) -> float:
    """Population stability index of two category distributions (shares), the categories the
    baseline never saw pooled as one."""
    other = sum(v for k, v in current.items() if k not in baseline)
    psi = 0.0
    for key, expected in [*baseline.items(), ("\0other", 0.0)]:
        actual = other if key == "\0other" else current.get(key, 0.0)
        if expected == 0 and actual == 0:
            continue
        e, a = max(expected, EPSILON), max(actual, EPSILON)
        psi += (a - e) * math.log(a / e)
    return psi


@dataclass(frozen=True)
class FeatureDrift:
    feature: str  # a column, or "__prediction__"
    statistic: str  # "ks" or "psi"
    value: float | None  # None: too few rows to judge
    threshold: float
    drifted: bool
    rows: int
    note: str = ""
    # the two distributions side by side, for a plot: bins (the baseline's deciles, or its
    # categories and "other") and the share of each data set in each bin
    bins: list[str] = field(default_factory=list)
    baseline_shares: list[float] = field(default_factory=list)
    current_shares: list[float] = field(default_factory=list)

    def describe(self) -> str:
        name = "predictions" if self.feature == PREDICTIONS else f"feature {self.feature!r}"
        if self.value is None:
            return f"{name}: {self.note}"
        return (f"{name}: {self.statistic} {self.value:.3f} "
                f"{'>' if self.drifted else '<='} {self.threshold:g}"
                + (" DRIFT" if self.drifted else ""))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(baseline: Mapping[str, Any], features: Any, predictions: Any = None, *,
            ks_threshold: float = 0.2, psi_threshold: float = 0.2,
            min_rows: int = 30) -> list[FeatureDrift]:
    """Each feature of the baseline profile (and its predictions) judged against what is
    served now (``features``, a DataFrame of logged inputs; ``predictions`` alongside)."""
    current = profile(features, predictions) if len(features) else {"columns": {}}
    found: list[FeatureDrift] = []
    for name, base in baseline["columns"].items():
        now = current["columns"].get(name)
        kind = base["kind"]
        statistic = "ks" if kind == "numeric" else "psi"
        threshold = ks_threshold if kind == "numeric" else psi_threshold
        if now is None:
            note = "not in the logged requests" if name != PREDICTIONS else "none logged"
            found.append(FeatureDrift(name, statistic, None, threshold, False, 0, note))
            continue
        rows = now["rows"]
        if rows < min_rows:
            found.append(FeatureDrift(name, statistic, None, threshold, False, rows,
                                      f"{rows} rows logged, {min_rows} needed to judge"))
            continue
        if kind == "numeric" and now["kind"] == "numeric":
            values = _values(features, predictions, name)
            value = ks_statistic(base["sample"], values)
            bins, before, after = _histograms(base, values)
        else:
            shares = now.get("frequencies") or _shares(features, predictions, name)
            value = stability_index(base.get("frequencies", {}), shares)
            bins, before, after = _categories(base.get("frequencies", {}), shares)
        found.append(FeatureDrift(name, statistic, round(value, 6), threshold,
                                  value > threshold, rows, "", bins, before, after))
    return found


def _values(features: Any, predictions: Any, name: str) -> list[float]:
    import pandas as pd

    column = pd.Series(list(predictions)) if name == PREDICTIONS else features[name]
    return [float(v) for v in column.dropna()]


def _shares(features: Any, predictions: Any, name: str) -> dict[str, float]:
    import pandas as pd

    column = pd.Series(list(predictions)) if name == PREDICTIONS else features[name]
    counts = column.dropna().astype(str).value_counts(normalize=True)
    return {str(k): float(v) for k, v in counts.items()}


def _histograms(base: Mapping[str, Any], values: list[float]) -> tuple[list[str], list[float],
                                                                      list[float]]:
    """Shares of the baseline's sample and of ``values`` between the baseline's deciles (the
    outer bins open-ended)."""
    import numpy as np

    edges = sorted(set(base.get("deciles") or []))
    if len(edges) < 2:
        return [], [], []
    inner = np.array(edges[1:-1])

    def shares(data: list[float]) -> list[float]:
        counts = np.bincount(np.searchsorted(inner, np.array(data), side="right"),
                             minlength=len(edges) - 1)
        return [round(float(c) / max(len(data), 1), 4) for c in counts]

    labels = [f"{low:.4g}..{high:.4g}" for low, high in zip(edges, edges[1:], strict=False)]
    return labels, shares(base["sample"]), shares(values)


def _categories(before: Mapping[str, float], after: Mapping[str, float], top: int = 12
                ) -> tuple[list[str], list[float], list[float]]:
    """The baseline's most frequent categories and "other", with both data sets' shares."""
    names = sorted(before, key=lambda k: -before[k])[:top]
    rest_before = 1 - sum(before[n] for n in names)
    rest_after = 1 - sum(after.get(n, 0.0) for n in names)
    return ([*names, "other"], [round(before[n], 4) for n in names] + [round(rest_before, 4)],
            [round(after.get(n, 0.0), 4) for n in names] + [round(max(rest_after, 0.0), 4)])
