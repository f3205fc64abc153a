"""What validation found: per-table counts, reasons, and messages naming file, row and field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

MAX_PROBLEMS = 1000
"""Problem messages kept in memory per table; the rejects file always has every row."""


@dataclass
class Issue:
    """One problem with one field of one row."""

    row: int
    field: str
    value: str
    reason: str
    detail: str = ""


def format_value(value: object, limit: int = 200) -> str:
    """A value as a short string for rejects files and messages."""
    if value is None:
        return ""
    text = str(value) if not isinstance(value, float) or value == value else "NaN"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problem_message(file: Path | str, issue: Issue) -> str:
    """``items.csv row 3, field title: null (detail) [value '...']``."""
    name = Path(file).name
    text = f"{name} row {issue.row}, field {issue.field}: {issue.reason}"
    if issue.detail:
        text += f" ({issue.detail})"
    if issue.value:
        text += f" [value {issue.value!r}]"
    return text


def rejects_frame(file: Path | str, issues: list[Issue]) -> pd.DataFrame:
    """The rejects table (file, row, field, value, reason), sorted by row."""
    frame = pd.DataFrame(
        {
            "file": pd.Series([str(file)] * len(issues), dtype=object),
            "row": pd.Series([i.row for i in issues], dtype="int64"),
            "field": pd.Series([i.field for i in issues], dtype=object),
            "value": pd.Series([i.value for i in issues], dtype=object),
            "reason": pd.Series([str(i.reason) for i in issues], dtype=object),
        }
    )
    return frame.sort_values("row", kind="stable").reset_index(drop=True)


@dataclass
class TableReport:
    """Validation counts for one table.

    Args:
        table: "items", "users", "impressions" or "feedback".
        file: the source file.
        rows_read: data rows in the file (malformed ones included).
        rows_kept: rows that passed every check.
        rejected: reason -> number of rows rejected for it (a row with two problems counts
            under both reasons, once under each).
        problems: messages naming file, row, field (at most `MAX_PROBLEMS`).
        problems_total: number of problems found, including those not kept in ``problems``.
        rejects_file: where the rejected rows were written, if they were.
    """

    table: str
    file: Path
    rows_read: int = 0
    rows_kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    problems_total: int = 0
    rejects_file: Path | None = None

    @property
    def rows_rejected(self) -> int:
        return self.rows_read - self.rows_kept

    @property
    def reject_fraction(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0


@dataclass
class ValidationReport:
    """Validation results for a dataset, one `TableReport` per table read."""

    tables: dict[str, TableReport] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Every table read kept at least one row."""
        return bool(self.tables) and all(t.rows_kept > 0 for t in self.tables.values())

    @property
    def problems(self) -> list[str]:
        """All kept problem messages, table by table."""
        return [p for t in self.tables.values() for p in t.problems]

    def over_limit(self, max_reject_fraction: float) -> list[TableReport]:
        """Tables whose fraction of rejected rows exceeds ``max_reject_fraction``."""
        return [t for t in self.tables.values() if t.reject_fraction > max_reject_fraction]

    def summary(self) -> str:
        """One line per table: rows read, kept and rejected by reason."""
        lines = []
        for t in self.tables.values():
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(t.rejected.items())) or "none"
            lines.append(
                f"{t.table} ({t.file.name}): read {t.rows_read}, kept {t.rows_kept}, "
                f"rejected {t.rows_rejected} ({reasons})"
            )
        return "\n".join(lines)
