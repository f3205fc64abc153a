"""The matrix's one table: matrix.json (every number) and matrix.md (what a reader compares).

Per recipe: the mean over its cells of one-draw and best-of-K true CTR with the training-seed
spread; against the baseline recipe, the paired per-run difference with a 95% t-interval over
runs; and one draw against `variant-select` (the platform's own personalization) on the same
pairs; and, where the cells measured it, the personal gain (one draw against the same draw made
for another user) over runs and per world.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icg.io import atomic_write_json, atomic_write_text
from icg.matrix.stats import RunKey, paired_difference, pooled_mean, seed_spread, t_interval

COLUMNS = ("one_draw", "best_of_k", "variant_select", "reference")


def caption(baseline: str, candidates: int, n_pairs: int) -> str:
    """The table's caption: what a row is and what the intervals are over."""
    return (
        f"Mean true CTR over cells (world × training seed); spread: max − min over training "
        f"seeds, mean over worlds. Δ vs {baseline}: paired difference per run (same world, "
        f"training seed, pairs and noise seeds), mean with a 95% Student-t interval in which "
        f"RUNS, not pairs, are the unit (n = runs; ~{n_pairs} pairs per run only make each run's "
        f"mean precise). Best of {candidates} under the run's own reward; variant-select: the "
        f"run's preference model picks among the item's shown covers."
    )


def summarise(
    cells: Sequence[Mapping[str, Any]], recipes: Sequence[str], baseline: str
) -> dict[str, dict[str, Any]]:
    """Per recipe, the table's numbers from its cells' results (``recipe``, ``world``,
    ``train_seed``, ``true_ctr`` of every `COLUMNS` entry)."""
    runs: dict[str, dict[str, dict[RunKey, float]]] = {r: {c: {} for c in COLUMNS} for r in recipes}
    for cell in cells:
        key = (int(cell["world"]), int(cell["train_seed"]))
        for column in COLUMNS:
            runs[cell["recipe"]][column][key] = float(cell["true_ctr"][column])
    rows: dict[str, dict[str, Any]] = {}
    for recipe in recipes:
        r = runs[recipe]
        if not r["one_draw"]:
            rows[recipe] = {"cells": 0}
            continue
        row: dict[str, Any] = {"cells": len(r["one_draw"])}
        for column in COLUMNS:
            row[column] = {"mean": t_interval(list(r[column].values())).mean,
                           "spread": seed_spread(r[column])}  # fmt: skip
        seconds = [
            c["seconds"]["stage_b"]
            for c in cells
            if c["recipe"] == recipe and (c.get("seconds") or {}).get("stage_b") is not None
        ]
        # what stage B cost per run (wall clock, as measured where it ran; None: not measured)
        row["stage_b_seconds"] = float(np.mean(seconds)) if seconds else None
        one_vs_variant = {k: v - r["variant_select"][k] for k, v in r["one_draw"].items()}
        row["one_draw_vs_variant_select"] = t_interval(list(one_vs_variant.values())).as_dict()
        if recipe != baseline and runs[baseline]["one_draw"]:
            row["vs_baseline"] = {
                c: paired_difference(r[c], runs[baseline][c]).as_dict()
                for c in ("one_draw", "best_of_k")
            }
        row["code"] = sorted({c.get("code", "unrecorded") for c in cells if c["recipe"] == recipe})
        gains = {(int(c["world"]), int(c["train_seed"])): c["personal_gain"]
                 for c in cells if c["recipe"] == recipe and c.get("personal_gain")}  # fmt: skip
        if gains:
            worlds = sorted({w for w, _ in gains})
            row["personal_gain"] = {
                "runs": t_interval([g["mean"] for g in gains.values()]).as_dict(),
                "worlds": {str(w): pooled_mean([g for k, g in gains.items() if k[0] == w])
                           for w in worlds},
            }  # fmt: skip
        rows[recipe] = row
    return rows


def code_markdown(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A warning when the cells were trained by more than one version of the code (cells record
    `icg.matrix.jobs.code_fingerprint`; older cells are ``unrecorded``), or no lines."""
    versions = {name: row["code"] for name, row in rows.items() if row.get("code")}
    every = sorted({v for codes in versions.values() for v in codes})
    if len(every) < 2:
        return []
    listed = "; ".join(f"{name}: {', '.join(codes)}" for name, codes in versions.items())
    return [
        "",
        f"Cells from {len(every)} code versions ({listed}). A cell is cached by its settings and "
        "the package version, not by the code: a recipe trained by other code differs from it "
        "also by that code's arithmetic, one more source of run-to-run noise in the intervals.",
    ]


def personal_markdown(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The personal-gain table (recipes whose cells measured it), or no lines."""
    measured = {name: row["personal_gain"] for name, row in rows.items() if "personal_gain" in row}
    if not measured:
        return []
    worlds = sorted({w for g in measured.values() for w in g["worlds"]}, key=int)
    lines = [
        "",
        "Personal gain: a pair's one draw minus the same draw (same noise) made for a user of "
        "another taste segment, both scored for the pair's user. Over runs: mean with a 95% "
        "t-interval over runs; per world: the pairs of its training seeds pooled (95% Wald).",
        "",
        "| recipe | over runs | " + " | ".join(f"world {w}" for w in worlds) + " |",
        "|---|---|" + "---|" * len(worlds),
    ]
    for name, g in measured.items():
        per_world = [g["worlds"].get(w) for w in worlds]
        cells = [_interval({"mean": d["mean"], "low": d["ci_low"], "high": d["ci_high"],
                            "n": d["n"]}) if d else "–" for d in per_world]  # fmt: skip
        lines.append(f"| {name} | {_interval(g['runs'])} | " + " | ".join(cells) + " |")
    return lines


def _num(x: float, signed: bool = False) -> str:
    return "–" if x is None or math.isnan(x) else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _interval(d: Mapping[str, float] | None) -> str:
    if d is None:
        return "(baseline)"
    return f"{_num(d['mean'], True)} [{_num(d['low'], True)}, {_num(d['high'], True)}] n={d['n']}"


def markdown(rows: Mapping[str, Mapping[str, Any]], baseline: str, text: str) -> str:
    """matrix.md: the caption and one row per recipe."""
    lines = [
        text,
        "",
        f"| recipe | cells | one draw | spread | best of K | spread | Δ one draw vs {baseline} "
        f"| Δ best of K vs {baseline} | one draw − variant-select | variant-select | reference "
        "| stage-B s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if not row.get("cells"):
            lines.append(f"| {name} | 0 |" + " |" * 10)
            continue
        vs = row.get("vs_baseline")
        lines.append(
            f"| {name} | {row['cells']} | {_num(row['one_draw']['mean'])} | "
            f"{_num(row['one_draw']['spread'])} | {_num(row['best_of_k']['mean'])} | "
            f"{_num(row['best_of_k']['spread'])} | {_interval(vs and vs['one_draw'])} | "
            f"{_interval(vs and vs['best_of_k'])} | "
            f"{_interval(row['one_draw_vs_variant_select'])} | "
            f"{_num(row['variant_select']['mean'])} | {_num(row['reference']['mean'])} | "
            f"{'–' if row['stage_b_seconds'] is None else round(row['stage_b_seconds'])} |"
        )
    return "\n".join(lines + personal_markdown(rows) + code_markdown(rows)) + "\n"


def write_table(
    out: str | Path,
    cells: Sequence[Mapping[str, Any]],
    recipes: Sequence[str],
    baseline: str,
    *,
    spec: Mapping[str, Any],
    candidates: int,
) -> dict[str, Any]:
    """Write ``out/matrix.json`` and ``out/matrix.md`` (atomically); returns the JSON."""
    out = Path(out)
    rows = summarise(cells, recipes, baseline)
    n_pairs = max((int(c["n_pairs"]) for c in cells), default=0)
    text = caption(baseline, candidates, n_pairs)
    table = {"caption": text, "baseline": baseline, "spec": dict(spec), "recipes": rows,
             "cells": [dict(c) for c in cells]}  # fmt: skip
    atomic_write_json(out / "matrix.json", table)
    atomic_write_text(out / "matrix.md", markdown(rows, baseline, text))
    return table
