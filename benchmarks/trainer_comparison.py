"""Stage A alone, stage B DRaFT and stage B reward-ranked, on one demo world (reads the truth
through `icg evaluate`; not a test).

From a finished `icg demo --out DEMO`: the ranked trainer is trained from the demo's stage A
with the demo's stage-B settings (same steps, pairs and rewards; `trainer: ranked`), then each
of stage A, the demo's DRaFT run and the ranked run is evaluated on the demo's pairs, one draw
with and without the user and the best of 8 under the recipe's reward (stage A alone is scored
with the DRaFT run's reward and statistics, the reward it would be trained on).

    python benchmarks/trainer_comparison.py --demo demo-out --out /tmp/tc [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

METHODS = "icg-nouser-single,icg-single,icg"
FIELDS = ("true_ctr", "true_taste_match", "fidelity_motif", "true_aesthetic")


def icg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "icg", *map(str, args)], check=True)


def eval_run(demo: Path, run: Path, out: Path, seed: int, users: int, items: int, k: int) -> dict:
    if not (run / "preference").exists():  # the best-of-K and swap scorers read it
        shutil.copytree(demo / "run" / "preference", run / "preference")
    icg(
        "evaluate", "--data", demo / "world", "--run", run, "--out", out, "--methods", METHODS,
        "--users", users, "--items", items, "--seed", seed, "--candidates", k, "--overwrite",
    )  # fmt: skip
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--candidates", type=int, default=8, help="K of the best-of-K rows")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    demo, out = args.demo, args.out
    draft = demo / "run" / "icg"
    cfg = yaml.safe_load((draft / "config.yaml").read_text())
    seed = int(cfg["seed"])

    runs: dict[str, Path] = {}
    # stage A alone, scored with the recipe's reward
    align = out / "align-only"
    shutil.copytree(
        demo / "run" / "align" / "adapter", align / "icg" / "adapter", dirs_exist_ok=True
    )
    for f in ("config.yaml", "reward_stats.safetensors"):
        shutil.copy(draft / f, align / "icg" / f)
    runs["stage A only"] = align
    # DRaFT: the demo's own stage B
    runs["stage A + DRaFT-1 (the recipe)"] = demo / "run"
    # ranked: the demo's stage-B settings with the ranked trainer
    ranked = out / "ranked"
    ranked_cfg = {k: v for k, v in cfg.items() if k not in ("data", "init", "out", "preference")}
    ranked_cfg["trainer"] = "ranked"
    (out).mkdir(parents=True, exist_ok=True)
    (out / "ranked.yaml").write_text(yaml.safe_dump(ranked_cfg))
    t0 = time.time()
    if not (ranked / "icg" / "adapter").is_dir():
        icg(
            "train", "reward", "--data", demo / "world", "--init", demo / "run" / "align",
            "--preference", demo / "run" / "preference", "--out", ranked / "icg",
            "--config", out / "ranked.yaml",
        )  # fmt: skip
    ranked_s = time.time() - t0  # 0 when an earlier call trained it
    runs["stage A + ranked (RAFT, best of 8)"] = ranked

    rows = {}
    for name, run in runs.items():
        m = eval_run(
            demo, run, out / "eval" / run.name, seed, args.users, args.items, args.candidates
        )
        rows[name] = {
            meth: {f: m["methods"][meth][f] for f in FIELDS} for meth in METHODS.split(",")
        } | {"personal_gain": m["personal_gain"]}
    result = {"demo": str(demo), "ranked_train_s": round(ranked_s, 1), "runs": rows}
    print("| run | draw | true CTR | taste | motif | aesthetic | personal gain |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        pg = r["personal_gain"]
        for meth, label in (("icg-single", "one"), ("icg", "best of 8")):
            v = r[meth]
            gain = f"{pg['mean']:+.3f} [{pg['ci_low']:+.3f}, {pg['ci_high']:+.3f}]"
            print(
                f"| {name} | {label} | {v['true_ctr']:.3f} | {v['true_taste_match']:.3f} | "
                f"{v['fidelity_motif']:.3f} | {v['true_aesthetic']:.3f} | "
                f"{gain if meth == 'icg-single' else ''} |"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
