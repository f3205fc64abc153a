"""`icg ab ...`: thin wrappers over icg.ab."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def _split(text: str | None) -> dict[str, float] | None:
    """'control=1,icg=1' -> {'control': 1.0, 'icg': 1.0}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, sep, share = part.partition("=")
        if not sep:
            raise typer.BadParameter(f"--split: expected ARM=SHARE, got {part!r}")
        out[name.strip()] = float(share)
    return out


def report(
    data: Annotated[Path, typer.Option(help="folder with impressions.* (and users.*), or a file")],
    out: Annotated[Path, typer.Option(help="folder to write ab.json and ab.html into")],
    control: Annotated[str, typer.Option(help="the control arm's name")],
    arm_column: Annotated[str, typer.Option(help="the column naming each row's arm")] = "arm",
    segment_column: Annotated[
        list[str] | None,
        typer.Option(help="break the lift down by this impressions/users column (repeatable)"),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="expected user shares for the SRM check: 'a=1,b=1'")
    ] = None,
    level: Annotated[float, typer.Option(help="interval coverage")] = 0.95,
    bootstrap: Annotated[int, typer.Option(help="Poisson-bootstrap replicates (0: none)")] = 0,
    preference: Annotated[
        Path | None,
        typer.Option(
            help="adjust CTR with this preference model's examination curve "
            "(default: a position-based model fitted to the log)"
        ),  # fmt: skip
    ] = None,
) -> None:
    """A/B analysis of an impression log with an arm column: lift, interval, p, power, SRM."""
    # deferred: every command module is imported for `icg --help`; this one loads torch
    from icg.ab import ab_report, load_log, write_report

    segments = segment_column or []
    log = load_log(data, arm_column, segments)
    arms = sorted(log[arm_column].unique())
    if control not in arms:
        raise typer.BadParameter(f"{control!r} is not an arm of {arm_column!r}: {arms}",
                                 param_hint="--control")  # fmt: skip
    exam = None
    if preference is not None:
        exam = _preference_examination(preference, int(log["position"].max()) + 1)
    result = ab_report(log, arm_column, control, segments, _split(split), level, bootstrap, exam)
    write_report(result, out)
    table = Table(title=f"A/B on {data} (control {control}); {out}/ab.html")
    for col in ("arm", "users", "CTR", "CTR lift (CI)", "p", "adjusted lift (CI)"):
        table.add_column(col)
    for arm, s in result["arms"].items():
        row = result["lift"].get(arm)
        cells = ["", "", ""]
        if row:
            c, a = row["ctr"], row["adjusted_ctr"]
            cells = [
                f"{c['lift']:+.2%} [{c['low']:+.2%}, {c['high']:+.2%}]", f"{c['p_value']:.3g}",
                f"{a['lift']:+.2%} [{a['low']:+.2%}, {a['high']:+.2%}]",
            ]  # fmt: skip
        table.add_row(arm, str(s["users"]), f"{s['ctr']:.4f}", *cells)
    Console().print(table)
    srm = result["srm"]
    Console().print(f"SRM: chi2 {srm['chi2']:.2f}, p {srm['p_value']:.3g}"
                    + (" MISMATCH" if srm["mismatch"] else ""))  # fmt: skip


def _preference_examination(folder: Path, positions: int):
    """exam(position) for positions 0..positions-1 from a saved preference model."""
    # deferred: every command module is imported for `icg --help`; this one loads torch
    import numpy as np
    import torch

    from icg.models.preference import PreferenceModel  # deferred too: loads diffusers

    model = PreferenceModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        log_exam = model.log_examination(torch.arange(positions))
    return np.exp(log_exam.numpy().astype(np.float64))
