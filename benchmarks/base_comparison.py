"""ICG's true CTR on a candidate base model and/or MLLM against the shipped ones, on several demo
worlds (reads the truth through `icg demo`'s evaluation; not a test).

For every seed of the reference metrics (`icg demo`'s `eval/metrics.json` of the shipped models,
e.g. the committed `docs/results/full-demo-metrics*.json`), runs the full demo on the candidate
models (`icg demo --seed S --base B --mllm M`; an interrupted call continues where it stopped) and
prints one draw (`icg-single`) and best of 8 (`icg`) side by side. The candidate "keeps every
figure" when neither is lower than the reference on any seed.

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


def summary(metrics: dict) -> dict:
    """The figures this comparison reads from one demo's metrics.json."""
    return {m: {f: metrics["methods"][m][f] for f in FIELDS} for m in DRAWS} | {
        "personal_gain": metrics["personal_gain"]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument("--mllm", default=DEFAULT_MLLM)
    parser.add_argument("--reference", type=Path, action="append", required=True,
                        help="metrics.json of a demo on the shipped models (one per seed)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="one demo folder per seed")
    parser.add_argument("--label", default="candidate")
    parser.add_argument("--json", type=Path, help="merge the runs into this file")
    args = parser.parse_args()

    rows = {}
    for ref_file in args.reference:
        reference = json.loads(ref_file.read_text())
        seed = int(reference["world"]["seed"])
        demo = args.out / f"seed{seed}"
        subprocess.run(
            [sys.executable, "-m", "icg", "demo", "--out", str(demo), "--seed", str(seed),
             "--base", args.base, "--mllm", args.mllm],
            check=True,
        )  # fmt: skip
        candidate = json.loads((demo / "eval" / "metrics.json").read_text())
        rows[seed] = {"reference": summary(reference), "candidate": summary(candidate)}

    kept = True
    print(f"true CTR, shipped → {args.label} (base {args.base}, mllm {args.mllm})")
    print("| seed | draw | shipped | " + args.label + " | difference | personal gain |")
    print("|---|---|---|---|---|---|")
    for seed, r in rows.items():
        gain = r["candidate"]["personal_gain"]
        for method, draw in DRAWS.items():
            ref, cand = r["reference"][method]["true_ctr"], r["candidate"][method]["true_ctr"]
            kept &= cand >= ref
            pg = f"{gain['mean']:+.3f} [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]"
            print(
                f"| {seed} | {draw} | {ref:.3f} | {cand:.3f} | {cand - ref:+.3f} | "
                f"{pg if method == 'icg-single' else ''} |"
            )
    print(f"{args.label} keeps every true-CTR figure: {'yes' if kept else 'no'}")
    if args.json:
        result = json.loads(args.json.read_text()) if args.json.is_file() else {}
        command = " ".join(["python", *sys.argv])
        runs = result.setdefault("runs", {})
        for seed, r in rows.items():
            runs[f"{args.label}_seed{seed}"] = r["candidate"] | {
                "base": args.base,
                "mllm": args.mllm,
                "command": command,
            }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
