"""The matrix's statistics: runs, not pairs, are the unit.

A run is one (world, training seed) training of a recipe. Its result is the mean true CTR over
the world's pairs; two recipes are compared by the per-run difference of those means (paired:
same world, same training seed, same pairs and noise seeds) and a Student-t interval over runs.
Pairs only make a run's mean precise: the training noise, the part that tells recipes apart or
not, varies between runs, so many pairs per run cannot shrink the interval below what the runs'
spread allows (a pair-level interval would, and would call noise a difference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

RunKey = tuple[int, int]  # (world seed, training seed)


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided Student-t interval over ``n`` runs (NaN bounds when ``n < 2``)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float

    def as_dict(self) -> dict[str, float | int | None]:
        """The fields, NaN as ``None`` (valid JSON)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v
                for k, v in asdict(self).items()}  # fmt: skip


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with the ``confidence`` Student-t interval:
    ``mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)`` (sd with n - 1 degrees of freedom)."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        raise ValueError("t_interval: no values")
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def paired_run_differences(
    runs: Mapping[RunKey, float], baseline: Mapping[RunKey, float]
) -> dict[RunKey, float]:
    """Per run both have, ``runs[k] - baseline[k]`` (each value a run's mean over its pairs)."""
    return {k: runs[k] - baseline[k] for k in sorted(runs) if k in baseline}


def paired_difference(
    runs: Mapping[RunKey, float], baseline: Mapping[RunKey, float], confidence: float = 0.95
) -> Interval:
    """The t-interval of the paired per-run differences (runs are the unit).

    Raises:
        ValueError: the two share no run.
    """
    diffs = paired_run_differences(runs, baseline)
    if not diffs:
        raise ValueError("paired_difference: no (world, training seed) run in common")
    return t_interval(list(diffs.values()), confidence)


def seed_spread(runs: Mapping[RunKey, float]) -> float:
    """Training-seed spread: per world, max - min over its training seeds; mean over worlds
    (0 with one training seed)."""
    worlds: dict[int, list[float]] = {}
    for (world, _), value in runs.items():
        worlds.setdefault(world, []).append(value)
    return float(np.mean([max(v) - min(v) for v in worlds.values()]))


def pooled_mean(groups: Sequence[Mapping[str, float]], z: float = 1.959963984540054) -> dict:
    """The mean of the values of several groups pooled into one sample, from each group's
    ``n``, ``mean`` and ``sd`` (ddof 1), with its normal (Wald) interval ``mean ± z · sd / √N``:
    e.g. one world's per-pair personal gains over its training seeds' cells."""
    n = np.array([g["n"] for g in groups], dtype=np.float64)
    means = np.array([g["mean"] for g in groups], dtype=np.float64)
    sds = np.array([g.get("sd") or 0.0 for g in groups], dtype=np.float64)
    total = float(n.sum())
    mean = float((n * means).sum() / total)
    if total < 2:
        return {"mean": mean, "ci_low": math.nan, "ci_high": math.nan, "n": int(total)}
    ss = float(((n - 1) * sds**2).sum() + (n * (means - mean) ** 2).sum())
    half = z * math.sqrt(ss / (total - 1)) / math.sqrt(total)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": int(total)}
