"""ICG's true CTR on a candidate base model and/or MLLM against the shipped ones, on several demo
worlds (reads the truth through `icg demo`'s evaluation; not a test).

For every seed of the reference metrics (`icg demo`'s `eval/metrics.json` of the shipped models,
e.g. the committed `docs/results/full-demo-metrics*.json`), runs the full demo on the candidate
models (`icg demo --seed S --base B --mllm M`; an interrupted call continues where it stopped) and
prints one draw (`icg-single`) and best of 8 (`icg`) side by side. The candidate "keeps every
figure" when neither is lower than the reference on any seed.

A `--reference` may also be the shipped models' demo folder itself. Both demos then hold covers
for the same (user, item) pairs, and the difference is also given paired: the truth's CTR of the
candidate's cover minus the reference's, per pair, with its 95% interval. Pairing removes what
the two share (the item's popularity, the user's bias), so the interval says whether a
difference is larger than what one draw per pair can tell apart.

    python benchmarks/base_comparison.py --base /tmp/sd-v4 --out /tmp/bc \\
        --reference docs/results/full-demo-metrics.json \\
        --reference docs/results/full-demo-metrics-seed11.json [--json OUT.json --label v4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from icg.config import DEFAULT_BASE, DEFAULT_MLLM

DRAWS = {"icg-single": "one draw", "icg": "best of 8"}
FIELDS = ("true_ctr", "true_taste_match", "fidelity_motif", "fidelity_palette", "true_aesthetic")


def paired_ctr(reference: Path, candidate: Path) -> dict:
    """Per method of `DRAWS`: `mean_interval` of the truth's CTR of ``candidate``'s cover minus
    ``reference``'s, per pair (two demo folders of the same world)."""
    import pandas as pd

    from icg.evaluation.baselines import load_covers
    from icg.evaluation.personal import mean_interval
    from icg.world.truth import Truth

    worlds = [(d / "world" / "world.yaml").read_text() for d in (reference, candidate)]
    if worlds[0] != worlds[1]:
        raise SystemExit(f"{reference} and {candidate}: the demos' worlds differ")
    truth, keys = Truth(candidate / "world"), ["user_id", "item_id"]
    manifests = [
        pd.read_parquet(d / "eval" / "covers" / "manifest.parquet") for d in (reference, candidate)
    ]
    out = {}
    for method in DRAWS:
        covers = [m[m["method"] == method] for m in manifests]
        pairs = covers[0][keys].merge(covers[1][keys])
        ctr = []
        for table in covers:
            table = pairs.merge(table, on=keys, how="left")
            images = load_covers(table["path"].tolist(), 64)
            users, items = table["user_id"].tolist(), table["item_id"].tolist()
            ctr.append(truth.score(images, users, items)["ctr"])
        out[method] = mean_interval(ctr[1] - ctr[0])
    return out


def summary(metrics: dict) -> dict:
    """The figures this comparison reads from one demo's metrics.json."""
    return {m: {f: metrics["methods"][m][f] for f in FIELDS} for m in DRAWS} | {
        "personal_gain": metrics["personal_gain"]
    }


def interval(x: dict) -> str:
    return f"{x['mean']:+.3f} [{x['ci_low']:+.3f}, {x['ci_high']:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument("--mllm", default=DEFAULT_MLLM)
    parser.add_argument("--reference", type=Path, action="append", required=True,
                        help="metrics.json of a demo on the shipped models (one per seed), or "
                        "that demo's folder (adds the paired difference)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="one demo folder per seed")
    parser.add_argument("--label", default="candidate")
    parser.add_argument("--train-seed-offset", type=int, default=0,
                        help="train with seed + this on the reference's world (0: its seed), "
                        "to see the training's own noise")  # fmt: skip
    parser.add_argument("--json", type=Path, help="merge the runs into this file")
    args = parser.parse_args()

    rows = {}
    for ref in args.reference:
        ref_demo = ref if ref.is_dir() else None
        reference = json.loads((ref / "eval" / "metrics.json" if ref_demo else ref).read_text())
        seed = int(reference["world"]["seed"])
        demo = args.out / f"seed{seed}"
        subprocess.run(
            [sys.executable, "-m", "icg", "demo", "--out", str(demo), "--seed", str(seed),
             "--train-seed", str(seed + args.train_seed_offset),
             "--base", args.base, "--mllm", args.mllm],
            check=True,
        )  # fmt: skip
        candidate = json.loads((demo / "eval" / "metrics.json").read_text())
        rows[seed] = {"reference": summary(reference), "candidate": summary(candidate)}
        if ref_demo is not None:
            rows[seed]["paired"] = paired_ctr(ref_demo, demo)

    kept = True
    print(f"true CTR, shipped → {args.label} (base {args.base}, mllm {args.mllm})")
    print(
        "| seed | draw | shipped | " + args.label + " | difference | paired, 95% | personal gain |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed, r in rows.items():
        gain = r["candidate"]["personal_gain"]
        for method, draw in DRAWS.items():
            ref, cand = r["reference"][method]["true_ctr"], r["candidate"][method]["true_ctr"]
            kept &= cand >= ref
            paired = r.get("paired", {}).get(method)
            print(
                f"| {seed} | {draw} | {ref:.3f} | {cand:.3f} | {cand - ref:+.3f} | "
                f"{interval(paired) if paired else ''} | "
                f"{interval(gain) if method == 'icg-single' else ''} |"
            )
    print(f"{args.label} keeps every true-CTR figure: {'yes' if kept else 'no'}")
    if args.json:
        result = json.loads(args.json.read_text()) if args.json.is_file() else {}
        command = " ".join(["python", *sys.argv])
        runs = result.setdefault("runs", {})
        for seed, r in rows.items():
            runs[f"{args.label}_seed{seed}"] = r["candidate"] | {
                "paired_true_ctr": r.get("paired"),
                "base": args.base,
                "mllm": args.mllm,
                "train_seed": seed + args.train_seed_offset,
                "command": command,
            }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
