"""The statistics of an A/B test on a ratio metric (clicks / impressions), clustered by user.

Users, not impressions, are randomised, so impressions of one user are not independent; every
variance here treats the user as the unit: the delta method for a ratio of per-user sums (Deng,
Knoblich & Lu 2018, "Applying the Delta Method in Metric Analytics", Sec. 3) or a Poisson
bootstrap over users (Chamandy et al. 2012, "Estimating Uncertainty for Massive Data Streams").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

# An SRM p-value under this flags the split as broken (Fabijan et al. 2019, "Diagnosing Sample
# Ratio Mismatch in Online Controlled Experiments", Sec. 4).
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class RatioStats:
    """A ratio metric sum(num) / sum(den) over users and its delta-method variance.

    Args:
        users: number of users (clusters).
        num: total numerator (clicks).
        den: total denominator (impressions, or expected examinations).
        value: num / den.
        var: delta-method variance of `value` (Deng et al. 2018, Sec. 3.1).
    """

    users: int
    num: float
    den: float
    value: float
    var: float

    @property
    def var_log(self) -> float:
        """Variance of log(value), by the delta method."""
        return self.var / self.value**2 if self.value > 0 else float("inf")


def ratio_stats(num: np.ndarray, den: np.ndarray) -> RatioStats:
    """The ratio of per-user sums `num` (U,) / `den` (U,) and its variance clustered by user:

    Var(Y/X) ~ (s_yy / x^2 - 2 y s_xy / x^3 + y^2 s_xx / x^4) / U  (means y, x; sample moments s).
    """
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    n = len(num)
    if n == 0 or den.sum() <= 0:
        return RatioStats(n, float(num.sum()), float(den.sum()), float("nan"), float("nan"))
    y, x = num.mean(), den.mean()
    if n > 1:
        cov = np.cov(np.stack([num, den]), ddof=1)  # (2, 2)
        s_yy, s_xy, s_xx = cov[0, 0], cov[0, 1], cov[1, 1]
        var = (s_yy / x**2 - 2 * y * s_xy / x**3 + y**2 * s_xx / x**4) / n
    else:
        var = float("inf")
    return RatioStats(n, float(num.sum()), float(den.sum()), float(y / x), float(max(var, 0.0)))


def lift(treatment: RatioStats, control: RatioStats, level: float = 0.95) -> dict[str, float]:
    """Relative lift of `treatment` over `control`, its interval and a two-sided p-value.

    The interval is exp(d +- z se) - 1 for d = log(R_t / R_c), se^2 = Var(log R_t) + Var(log R_c)
    (independent arms: users are randomised), which keeps the interval's lower end above -1.
    """
    if not (treatment.value > 0 and control.value > 0):  # no click in an arm: no log-ratio
        nan = float("nan")
        return {"lift": nan, "low": nan, "high": nan, "log_ratio": nan, "se_log_ratio": nan,
                "p_value": nan, "level": level}  # fmt: skip
    d = float(np.log(treatment.value / control.value))
    se = float(np.sqrt(treatment.var_log + control.var_log))
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = float(2 * stats.norm.sf(abs(d) / se)) if se > 0 else float("nan")
    return {
        "lift": float(np.expm1(d)),
        "low": float(np.expm1(d - z * se)),
        "high": float(np.expm1(d + z * se)),
        "log_ratio": d,
        "se_log_ratio": se,
        "p_value": p,
        "level": level,
    }


def bootstrap_lift(
    treatment: tuple[np.ndarray, np.ndarray],
    control: tuple[np.ndarray, np.ndarray],
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile interval of the relative lift from a Poisson bootstrap over users: each user's
    (num, den) sums get a Poisson(1) weight per replicate (Chamandy et al. 2012, Sec. 3)."""
    rng = np.random.default_rng(seed)
    ratios, valid = [], np.ones(replicates, dtype=bool)
    for num, den in (treatment, control):
        w = rng.poisson(1.0, (replicates, len(num))).astype(np.float64)  # (B, U)
        num_b, den_b = w @ num, w @ den  # (B,)
        valid &= (den_b > 0) & (num_b > 0)  # a replicate that drew no impression (or click)
        ratios.append(num_b / np.maximum(den_b, 1e-12))
    lifts = ratios[0][valid] / ratios[1][valid] - 1.0
    a = (1 - level) / 2
    low, high = np.quantile(lifts, [a, 1 - a]) if len(lifts) else (float("nan"),) * 2
    return {"low": float(low), "high": float(high), "replicates": int(valid.sum()),
            "level": level}  # fmt: skip


def sample_size(
    treatment: RatioStats, control: RatioStats, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Users per arm (equal arms) for a two-sided test at `alpha` to detect the observed
    log-ratio with probability `power`: n = (z_{1-a/2} + z_power)^2 (v_t + v_c) / d^2, where
    v = U Var(log R) is each arm's per-user variance of log R. Infinite for no effect."""
    if not (treatment.value > 0 and control.value > 0):
        return float("inf")
    d = np.log(treatment.value / control.value)
    if not np.isfinite(d) or d == 0:
        return float("inf")
    v = treatment.users * treatment.var_log + control.users * control.var_log
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(np.ceil(z**2 * v / d**2))


def srm_check(counts: dict[str, int], expected: dict[str, float]) -> dict[str, object]:
    """Chi-square goodness of fit of the users per arm to the expected split (fractions, any
    scale): a small p-value says the randomisation or the logging is broken."""
    arms = list(counts)
    observed = np.array([counts[a] for a in arms], dtype=np.float64)
    share = np.array([expected[a] for a in arms], dtype=np.float64)
    exp = observed.sum() * share / share.sum()
    chi2 = float(((observed - exp) ** 2 / exp).sum())
    p = float(stats.chi2.sf(chi2, len(arms) - 1)) if len(arms) > 1 else 1.0
    return {
        "observed": {a: int(c) for a, c in zip(arms, observed, strict=True)},
        "expected": {a: float(e) for a, e in zip(arms, exp, strict=True)},
        "chi2": chi2,
        "p_value": p,
        "mismatch": p < SRM_ALPHA,
        "alpha": SRM_ALPHA,
    }
