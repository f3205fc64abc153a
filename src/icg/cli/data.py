"""`icg data validate`: check a data folder and print what would be kept and rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from icg.data import DataError, ValidationReport, load_dataset


def _summary_table(report: ValidationReport) -> Table:
    table = Table(title="icg data validate")
    for column in ("table", "file", "rows read", "kept", "rejected", "by reason"):
        table.add_column(
            column, justify="right" if column in ("rows read", "kept", "rejected") else "left"
        )
    for t in report.tables.values():
        reasons = ", ".join(f"{k}: {v}" for k, v in t.rejected.items()) or "-"
        table.add_row(
            t.table, t.file.name, str(t.rows_read), str(t.rows_kept), str(t.rows_rejected), reasons
        )
    return table


def validate(
    path: Annotated[
        Path, typer.Argument(help="The data folder (items.*, users.*, impressions.*).")
    ],
    rejects_dir: Annotated[
        Path | None,
        typer.Option(
            help="A dedicated folder for the rejected rows (file, row, field, value, reason); "
            "none are written without it, and never into the data folder itself."
        ),
    ] = None,
    max_reject_fraction: Annotated[
        float, typer.Option(help="Fail when a table rejects more than this fraction of rows.")
    ] = 0.5,
    check_images: Annotated[
        bool, typer.Option(help="Open and decode every referenced image once.")
    ] = True,
) -> None:
    """Validate a data folder: print rows read, kept and rejected by reason per table.

    Exits 0 when the data is usable, 1 (naming file, row and field) when it is not.
    """
    out, err = Console(), Console(stderr=True)
    try:
        data = load_dataset(path, rejects_dir=rejects_dir, check_images=check_images)
    except DataError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    report = data.report
    out.print(_summary_table(report))
    for t in report.tables.values():
        if t.rejects_file is not None and t.rows_rejected:
            out.print(f"{t.table}: rejected rows written to {t.rejects_file}", soft_wrap=True)
    if rejects_dir is None and any(t.rows_rejected for t in report.tables.values()):
        out.print("rejected rows not written; pass --rejects-dir DIR to write them")
    too_many = report.over_limit(max_reject_fraction)
    if not report.usable or too_many:
        for t in too_many:
            first = escape("; ".join(t.problems[:3]))
            err.print(
                f"[bold red]error:[/] {t.file.name}: {t.rows_rejected} of {t.rows_read} rows "
                f"rejected ({t.reject_fraction:.0%} > {max_reject_fraction:.0%}); first: {first}",
                markup=True,
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(1)
    for message in report.problems[:10]:
        out.print(f"  {message}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"[green]usable[/]: embedding_dim={data.embedding_dim}")
