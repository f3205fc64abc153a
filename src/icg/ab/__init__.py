"""A/B analysis of any impression log with an arm column: lift with user-clustered intervals,
power, sample-ratio mismatch, segments and position-adjusted CTR (`icg ab report`)."""

from icg.ab.randomise import assign_arms
from icg.ab.report import ab_report, load_log, write_report
from icg.ab.stats import RatioStats, lift, ratio_stats, sample_size, srm_check

__all__ = [
    "RatioStats",
    "ab_report",
    "assign_arms",
    "lift",
    "load_log",
    "ratio_stats",
    "sample_size",
    "srm_check",
    "write_report",
]
