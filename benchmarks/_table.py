"""One row format and one table for every benchmark (`make bench` prints them all together)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One measurement and, where it has one, its ratio to a baseline measured in the same run.

    Args:
        benchmark: which script measured it.
        case: what was measured.
        value: the number.
        unit: its unit.
        baseline: the case it is compared with ("" when none).
        ratio: value / baseline value (``None`` when there is no baseline).
    """

    benchmark: str
    case: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None


def print_table(rows: list[Row], title: str = "icg benchmarks") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("benchmark", "case", "value", "unit", "baseline", "ratio"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.3f}x"
        table.add_row(r.benchmark, r.case, f"{r.value:,.4g}", r.unit, r.baseline, ratio)
    Console(width=200).print(table)
