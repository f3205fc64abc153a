"""`icg ab report`: the analysis of an impression log whose rows carry an arm.

log = load_log(DIR, arm_column="arm")          # impressions.{parquet,csv,jsonl}, + users
report = ab_report(log, "arm", control="control")
write_report(report, OUT)                       # OUT/ab.json, OUT/ab.html
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from icg.ab.examination import fit_pbm
from icg.ab.html import render_html
from icg.ab.stats import bootstrap_lift, lift, ratio_stats, sample_size, srm_check
from icg.data.coerce import null_mask, parse_bool, parse_int, parse_timestamp
from icg.data.errors import DataError
from icg.data.readers import find_table_file, read_raw
from icg.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

REQUIRED = ("user_id", "clicked")
ACTIVITY_BUCKETS = 4
# With fewer users in an arm, a variance estimated over users is itself too noisy to trust.
MIN_USERS = 10
DAY = 86_400


def load_log(
    data: Path | str, arm_column: str, segment_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """The impressions of `data` (a folder with impressions.* and optionally users.*, or one
    table file) with user_id, clicked, the arm and, where present, position, item_id, cover,
    timestamp; `segment_columns` come from the impressions or else the users table.

    Raises:
        DataError: a missing table or column, or a value that does not parse (file, row, field).
    """
    data = Path(data)
    folder = data if data.is_dir() else data.parent
    file = find_table_file(data, "impressions") if data.is_dir() else data
    if file is None:
        raise DataError(
            f"{data}: no impressions table (impressions.parquet/.csv/.jsonl)", file=data
        )
    frame = read_raw(file).frame
    for col in (*REQUIRED, arm_column):
        if col not in frame.columns:
            raise DataError(f"{file}: missing column {col!r}", file=file, field=col)
    keep = [*REQUIRED, arm_column, "position", "item_id", "cover", "timestamp"]
    log = frame[[c for c in dict.fromkeys(keep) if c in frame.columns]].copy()
    for col in segment_columns:
        if col in frame.columns:
            log[col] = frame[col]
            continue
        users_file = find_table_file(folder, "users")
        users = read_raw(users_file).frame if users_file is not None else None
        if users is None or col not in users.columns:
            raise DataError(f"{file}: segment column {col!r} in neither impressions nor users",
                            file=file, field=col)  # fmt: skip
        log[col] = log["user_id"].map(users.drop_duplicates("user_id").set_index("user_id")[col])
    parsers = {"clicked": parse_bool, "position": parse_int, "timestamp": parse_timestamp}
    for col in (*REQUIRED, arm_column, *[c for c in parsers if c in log.columns]):
        missing = null_mask(log[col])
        if missing.any():
            row = missing.idxmax()
            raise DataError(f"{file}: row {row}: {col} is missing", file=file, row=row, field=col)
        if col in parsers:
            values, bad = parsers[col](log[col])
            if bad.any():
                row = bad.idxmax()
                raise DataError(f"{file}: row {row}: {col}={log[col][row]!r} does not parse",
                                file=file, row=row, field=col)  # fmt: skip
            log[col] = values.astype(bool if col == "clicked" else np.int64)
    log["user_id"] = log["user_id"].astype(str)
    log[arm_column] = log[arm_column].astype(str)
    return log.reset_index(drop=True)


def _per_user(log: pd.DataFrame, arm_column: str, exam: np.ndarray | None) -> pd.DataFrame:
    """Per (arm, user): clicks, impressions and expected examinations."""
    frame = pd.DataFrame({
        "arm": log[arm_column], "user_id": log["user_id"],
        "clicks": log["clicked"].astype(np.float64), "impressions": 1.0,
        "examined": 1.0 if exam is None
        else exam[np.minimum(log["position"].to_numpy(), len(exam) - 1)],
    })  # fmt: skip
    return frame.groupby(["arm", "user_id"], sort=True).sum().reset_index()


def _compare(users: pd.DataFrame, arms: list[str], control: str, level: float) -> dict:
    """Per arm CTR (and adjusted CTR); per treatment arm the lift over control."""
    out: dict = {"arms": {}, "lift": {}}
    stats = {}
    for arm in arms:
        u = users[users["arm"] == arm]
        ctr = ratio_stats(u["clicks"].to_numpy(), u["impressions"].to_numpy())
        adj = ratio_stats(u["clicks"].to_numpy(), u["examined"].to_numpy())
        stats[arm] = (ctr, adj)
        out["arms"][arm] = {
            "users": ctr.users, "impressions": int(ctr.den), "clicks": int(ctr.num),
            "ctr": ctr.value, "ctr_se": float(np.sqrt(ctr.var)),
            "adjusted_ctr": adj.value, "adjusted_ctr_se": float(np.sqrt(adj.var)),
        }  # fmt: skip
    for arm in arms:
        if arm == control or min(stats[arm][0].users, stats[control][0].users) < 2:
            continue
        out["lift"][arm] = {
            "ctr": lift(stats[arm][0], stats[control][0], level),
            "adjusted_ctr": lift(stats[arm][1], stats[control][1], level),
        }
    return out


def _activity_bucket(log: pd.DataFrame) -> pd.Series:
    """Quartile of each impression's user by impressions in the log (pooled over arms)."""
    per_user = log.groupby("user_id").size()
    ranks = per_user.rank(method="first") / len(per_user)
    bucket = np.minimum((ranks * ACTIVITY_BUCKETS).astype(int), ACTIVITY_BUCKETS - 1)
    lo = per_user.groupby(bucket).min()
    hi = per_user.groupby(bucket).max()
    names = {b: f"q{b + 1} ({lo[b]}-{hi[b]} impressions)" for b in lo.index}
    return log["user_id"].map(bucket.map(names))


def ab_report(
    log: pd.DataFrame,
    arm_column: str,
    control: str,
    segment_columns: Sequence[str] = (),
    split: dict[str, float] | None = None,
    level: float = 0.95,
    bootstrap: int = 0,
    examination: np.ndarray | None = None,
    seed: int = 0,
) -> dict:
    """Everything `icg ab report` writes, as a JSON-ready dict.

    Args:
        log: impressions (`load_log`): user_id, clicked, the arm; optional position, cover or
            item_id (the PBM's documents), timestamp (lift per day), segment columns.
        arm_column: the column naming each impression's arm.
        control: the control arm's name.
        segment_columns: columns to break the lift down by; user activity quartiles always.
        split: each arm's expected share of users for the SRM check (default equal).
        level: the intervals' coverage.
        bootstrap: Poisson-bootstrap replicates of the lift over users (0: delta method only).
        examination: exam(position) to adjust CTR with (e.g. a preference model's curve);
            default: a position-based model fitted to this log.
        seed: the bootstrap's seed.
    """
    arms = sorted(log[arm_column].unique().tolist())
    if control not in arms:
        raise ValueError(f"control: {control!r} is not an arm of {arm_column!r}: {arms}")
    shared = log.groupby("user_id")[arm_column].nunique()
    crossed = shared.index[shared > 1]
    if len(crossed):
        logger.warning("%d users are in several arms; they are left out", len(crossed))
        log = log[~log["user_id"].isin(crossed)]
    exam_source = "given"
    if examination is None and "position" in log.columns:
        doc_col = "cover" if "cover" in log.columns else "item_id" if "item_id" in log else None
        doc = (log[arm_column] + "|" + log[doc_col].astype(str)) if doc_col else log[arm_column]
        examination = fit_pbm(log["position"].to_numpy(), pd.factorize(doc)[0], log["clicked"])
        exam_source = (
            f"position-based model fitted to the log (documents: arm x {doc_col or 'arm'})"
        )
    elif examination is None:
        exam_source = "none: the log has no position column"
    users = _per_user(log, arm_column, examination)
    report = {
        "arm_column": arm_column, "control": control, "level": level,
        **_compare(users, arms, control, level),
        "srm": srm_check(users.groupby("arm").size().reindex(arms, fill_value=0).to_dict(),
                         split or dict.fromkeys(arms, 1.0)),
        "users_in_several_arms": len(crossed),
        "examination": {"source": exam_source,
                        "curve": None if examination is None else [float(e) for e in examination]},
    }  # fmt: skip
    few = [a for a, s in report["arms"].items() if s["users"] < MIN_USERS]
    report["warnings"] = [f"{a}: {report['arms'][a]['users']} users (< {MIN_USERS}); intervals "
                          "clustered by user are unreliable with so few" for a in few]  # fmt: skip
    for line in report["warnings"]:
        logger.warning(line)
    mean_imps = users.groupby("arm")["impressions"].mean()
    for arm, row in report["lift"].items():
        t, c = (users[users["arm"] == a] for a in (arm, control))
        n = sample_size(ratio_stats(t["clicks"], t["impressions"]),
                        ratio_stats(c["clicks"], c["impressions"]))  # fmt: skip
        row["users_needed_per_arm"] = n
        row["impressions_needed_per_arm"] = n * float(mean_imps[[arm, control]].mean())
        if bootstrap:
            row["bootstrap"] = bootstrap_lift(
                (t["clicks"].to_numpy(), t["impressions"].to_numpy()),
                (c["clicks"].to_numpy(), c["impressions"].to_numpy()), bootstrap, level, seed,
            )  # fmt: skip
    segments = {"activity": _activity_bucket(log)}
    segments.update({col: log[col].astype(str) for col in segment_columns})
    if "timestamp" in log.columns:
        days = (log["timestamp"] - log["timestamp"].min()) // DAY
        segments["day"] = days.map(lambda d: f"day {d:03d}")
    report["segments"] = {}
    for name, values in segments.items():
        report["segments"][name] = {
            str(v): _compare(
                _per_user(log[values == v], arm_column, examination), arms, control, level
            )  # fmt: skip
            for v in sorted(values.unique())
        }
    return report


def _finite(value):
    """`value` with every NaN or infinite float as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_report(report: dict, out: Path | str) -> Path:
    """Write OUT/ab.json and OUT/ab.html (self-contained, an inline SVG plot)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ab.json", _finite(report), indent=2)
    atomic_write_text(out / "ab.html", render_html(report))
    return out
