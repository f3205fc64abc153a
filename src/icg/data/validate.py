"""Validate one raw table against its `TableSpec`: keep the good rows, explain every bad one."""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icg.data.coerce import PARSERS, null_mask, parse_embedding
from icg.data.errors import DataError
from icg.data.images import ImageChecker
from icg.data.readers import RawTable
from icg.data.report import (
    MAX_PROBLEMS,
    Issue,
    TableReport,
    format_value,
    problem_message,
    rejects_frame,
)
from icg.data.safety import (
    DEFAULT_CAPS,
    TRUTH_DIR,
    Caps,
    embedding_problems,
    resolve_input,
    string_issues,
    string_rule,
)
from icg.data.schemas import ColumnSpec, Kind, Reason, TableSpec

logger = logging.getLogger(__name__)

__all__ = ["TRUTH_DIR", "Refs", "Validated", "resolve_path", "validate_table"]

_UNKNOWN = {"users": Reason.UNKNOWN_USER, "items": Reason.UNKNOWN_ITEM}
_NOTHING = re.compile(r"(?!)")  # extra columns: any character, only the length is capped


@dataclass
class Refs:
    """Ids a referencing column may use, and ids that were rejected (for better messages)."""

    file: Path
    kept: set[str]
    rejected: set[str] = field(default_factory=set)


@dataclass
class Validated:
    """A validated table: the kept rows, the rejects and the report."""

    frame: pd.DataFrame
    rejects: pd.DataFrame
    report: TableReport
    embedding_dim: int | None = None
    rejected_ids: set[str] = field(default_factory=set)


class _Collector:
    """Gathers issues for one table."""

    def __init__(self, raw: pd.DataFrame) -> None:
        self.raw = raw
        self.issues: list[Issue] = []

    def add(self, mask: pd.Series, name: str, reason: str, detail: str = "") -> None:
        for row in mask.index[mask.to_numpy(dtype=bool)]:
            value = format_value(self.raw.at[row, name]) if name in self.raw else ""
            self.issues.append(Issue(int(row), name, value, reason, detail))

    def add_one(self, row: int, name: str, reason: str, detail: str) -> None:
        value = format_value(self.raw.at[row, name]) if name in self.raw else ""
        self.issues.append(Issue(int(row), name, value, reason, detail))


def resolve_path(value: str, root: Path) -> tuple[str | None, Reason | None, str]:
    """`icg.data.safety.resolve_input`: a data-folder path made absolute, or why it is refused."""
    return resolve_input(value, root)


def _check_column(
    col: ColumnSpec,
    raw: pd.Series,
    issues: _Collector,
    *,
    root: Path,
    refs: dict[str, Refs],
    checker: ImageChecker | None,
    embedding_dim: int | None,
    file: Path,
    caps: Caps = DEFAULT_CAPS,
) -> tuple[pd.Series, int | None]:
    """Parse and check one column; returns the parsed values (None where bad) and the
    embedding dimension for an embedding column."""
    null = null_mask(raw)
    if col.required:
        issues.add(null, col.name, Reason.NULL, "required value is missing")
    present = raw[~null]
    dim = None
    if col.kind is Kind.EMBEDDING:
        parsed, wrong, nonfinite = parse_embedding(present)
        issues.add(wrong, col.name, Reason.WRONG_TYPE, "expected a list of floats")
        issues.add(nonfinite, col.name, Reason.EMBEDDING_NON_FINITE, "NaN or infinite values")
        too_long, extreme = embedding_problems(parsed, caps)
        issues.add(too_long, col.name, Reason.TOO_LONG, f"over {caps.max_embedding_dim} entries")
        issues.add(extreme, col.name, Reason.EMBEDDING_MAGNITUDE, _extreme_detail(caps))
        parsed[too_long | extreme] = None
        dim = _embedding_dim(parsed, embedding_dim, file, col.name)
        lengths = parsed.map(lambda v: -1 if v is None else len(v))
        wrong_len = (lengths != dim) & (lengths >= 0)
        issues.add(wrong_len, col.name, Reason.EMBEDDING_LENGTH, f"expected length {dim}")
        parsed[wrong_len] = None
    else:
        parsed, bad = PARSERS[col.kind](present)
        issues.add(bad, col.name, Reason.WRONG_TYPE, f"expected {col.kind.value}")
        if col.kind in (Kind.STRING, Kind.PATH):
            for row, reason, detail in string_issues(parsed, *string_rule(col, caps)):
                issues.add_one(row, col.name, reason, detail)
                parsed[row] = None
    values = _place(parsed, raw.index)
    ok = values.notna()
    if col.non_negative:
        negative = ok & values.map(lambda v: v is not None and v < 0).astype(bool)
        issues.add(negative, col.name, Reason.NEGATIVE_POSITION, "expected a value >= 0")
        values[negative] = None
    if col.kind is Kind.PATH:
        values = _check_paths(col, values, issues, root=root, checker=checker)
    if col.unique:
        dup = values.notna() & values.duplicated(keep="first")
        first = values[values.notna()].drop_duplicates(keep="first")
        first_row = pd.Series(first.index, index=first.to_numpy())
        for row in values.index[dup.to_numpy(dtype=bool)]:
            issues.add_one(
                row, col.name, Reason.DUPLICATE_ID, f"first seen at row {first_row[values[row]]}"
            )
    if col.references and col.references in refs:
        ref = refs[col.references]
        unknown = values.notna() & ~values.isin(ref.kept)
        for row in values.index[unknown.to_numpy(dtype=bool)]:
            where = "rejected in" if values[row] in ref.rejected else "not found in"
            issues.add_one(row, col.name, _UNKNOWN[col.references], f"{where} {ref.file.name}")
    return values, dim


def _extreme_detail(caps: Caps) -> str:
    return (
        f"an entry over {caps.max_embedding_abs:g} in magnitude, or a norm over "
        f"{caps.max_embedding_norm_ratio:g} x the median norm"
    )


def _place(parsed: pd.Series, index: pd.Index) -> pd.Series:
    """Spread parsed values over the full index, None elsewhere (values may be arrays)."""
    out = np.full(len(index), None, dtype=object)
    out[index.get_indexer(parsed.index)] = parsed.to_numpy(dtype=object)
    return pd.Series(out, index=index, dtype=object)


def _embedding_dim(parsed: pd.Series, expected: int | None, file: Path, name: str) -> int:
    """The expected embedding length: the one given, else the strict-majority length."""
    if expected is not None:
        return expected
    lengths = Counter(len(v) for v in parsed.tolist() if v is not None)
    if not lengths:
        return 0
    (dim, count), *_ = lengths.most_common(1)
    total = sum(lengths.values())
    if count * 2 <= total:
        first = {}
        for row, v in parsed.items():
            if v is not None and len(v) not in first:
                first[len(v)] = row
        seen = ", ".join(f"length {n} first at row {r}" for n, r in sorted(first.items()))
        raise DataError(
            f"{file}: field {name!r} has inconsistent embedding lengths and no length is used "
            f"by a majority of rows ({seen})",
            file=file,
            field=name,
        )
    return dim


def _check_paths(
    col: ColumnSpec,
    values: pd.Series,
    issues: _Collector,
    *,
    root: Path,
    checker: ImageChecker | None,
) -> pd.Series:
    out: list[str | None] = []
    seen: dict[str, tuple[str | None, str | None, str]] = {}  # each distinct path once
    for row, value in zip(values.index, values.tolist(), strict=True):
        if value is None:
            out.append(None)
            continue
        if value not in seen:
            absolute, reason, detail = resolve_path(value, root)
            if reason is None and col.image and checker is not None:
                problem = checker(absolute)
                if problem is not None:
                    reason, detail = problem.reason, problem.detail
            seen[value] = (absolute, reason, detail)
        absolute, reason, detail = seen[value]
        if reason is not None:
            issues.add_one(row, col.name, reason, detail)
        out.append(absolute if reason is None else None)
    return pd.Series(out, index=values.index, dtype=object)


def validate_table(
    raw: RawTable,
    spec: TableSpec,
    *,
    root: Path,
    refs: dict[str, Refs] | None = None,
    checker: ImageChecker | None = None,
    embedding_dim: int | None = None,
    caps: Caps = DEFAULT_CAPS,
) -> Validated:
    """Validate a raw table: every bad row is rejected with its reasons, good rows are kept.

    Args:
        raw: the table as read (see `icg.data.readers.read_raw`).
        spec: the expected columns.
        root: the resolved data folder; paths are relative to it.
        refs: ids that reference columns may use, by table ("users", "items").
        checker: checks image files; None skips image checks (paths are still checked).
        embedding_dim: the expected embedding length; None takes the majority length.
        caps: length and magnitude limits (`icg.data.safety.Caps`); a value over one rejects
            its row.

    Raises:
        DataError: a required column is missing, or no row is valid.
    """
    frame, file = raw.frame, raw.path
    missing = [c for c in spec.required_columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{file}: missing required column(s) {missing} for table {spec.name!r} "
            f"(field {missing[0]!r}; found columns {list(frame.columns)})",
            file=file,
            field=missing[0],
        )
    issues = _Collector(frame)
    for row, value, detail in raw.malformed:
        issues.issues.append(Issue(row, "<row>", format_value(value), Reason.MALFORMED_ROW, detail))
    out = frame.copy()
    dim = None
    for col in spec.columns:
        if col.name not in frame.columns:
            continue
        values, col_dim = _check_column(
            col,
            frame[col.name],
            issues,
            root=root,
            refs=refs or {},
            checker=checker,
            embedding_dim=embedding_dim,
            file=file,
            caps=caps,
        )
        dim = col_dim if col_dim is not None else dim
        out[col.name] = values
    known = {c.name for c in spec.columns}
    for name in (c for c in frame.columns if c not in known):  # passed through: size only
        for row, reason, detail in string_issues(frame[name], caps.max_field_chars, _NOTHING):
            issues.add_one(row, name, reason, detail)
    bad_rows = {i.row for i in issues.issues}
    kept = out.loc[~out.index.isin(list(bad_rows))]
    kept = _finalise_dtypes(kept, spec)
    report = _report(spec.name, raw, issues.issues, len(kept))
    if raw.rows_read == 0:
        raise DataError(f"{file}: table {spec.name!r} has no rows", file=file)
    if kept.empty:
        first = min(issues.issues, key=lambda i: i.row) if issues.issues else None
        where = problem_message(file, first) if first else ""
        raise DataError(
            f"{file}: no valid rows in table {spec.name!r} ({raw.rows_read} read, all rejected); "
            f"first problem: {where}",
            file=file,
            row=first.row if first else None,
            field=first.field if first else None,
        )
    key = next((c.name for c in spec.columns if c.unique), None)
    rejected_ids: set[str] = set()
    if key is not None:
        bad_keys = frame.loc[frame.index.isin(list(bad_rows)), key]
        rejected_ids = {str(v) for v in bad_keys[~null_mask(bad_keys)].tolist()}
    return Validated(kept, rejects_frame(file, issues.issues), report, dim, rejected_ids)


def _finalise_dtypes(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Give the kept, fully valid columns their final dtypes; the index becomes 0..n-1."""
    frame = frame.copy()
    for col in spec.columns:
        if col.name not in frame.columns:
            continue
        if col.kind in (Kind.INT, Kind.TIMESTAMP):
            frame[col.name] = frame[col.name].astype("int64")
        elif col.kind is Kind.BOOL:
            frame[col.name] = frame[col.name].astype(bool)
        elif col.kind in (Kind.STRING, Kind.PATH) and col.required:
            frame[col.name] = frame[col.name].astype(object)
    frame.attrs.clear()
    return frame.reset_index(drop=True)


def _report(name: str, raw: RawTable, issues: list[Issue], kept: int) -> TableReport:
    rows_by_reason: dict[str, set[int]] = {}
    for issue in issues:
        rows_by_reason.setdefault(str(issue.reason), set()).add(issue.row)
    problems = [problem_message(raw.path, i) for i in sorted(issues, key=lambda i: i.row)]
    report = TableReport(
        table=name,
        file=raw.path,
        rows_read=raw.rows_read,
        rows_kept=kept,
        rejected={k: len(v) for k, v in sorted(rows_by_reason.items())},
        problems=problems[:MAX_PROBLEMS],
        problems_total=len(problems),
    )
    for message in problems[:5]:
        logger.debug("%s", message)
    return report


def embedding_matrix(users: pd.DataFrame) -> np.ndarray:
    """Stack a validated users frame's embeddings: (U, D) float32."""
    if users.empty:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(users["embedding"].tolist()).astype(np.float32, copy=False)
