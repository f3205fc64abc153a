"""Stage A alone, the demo's stage B and stage-B variants, on one demo world (reads the truth
through `icg evaluate`; not a test).

From a finished `icg demo --out DEMO`: each variant is stage B trained from the demo's stage A
with the demo's stage-B settings (same steps, pairs and rewards) and a few of them changed. By
default the one variant is the reward-ranked trainer (`trainer=ranked`); `--variant` replaces
it, e.g. `--variant "no aesthetic:rewards.aesthetic=0" --variant "lr 3e-4:learning_rate=3e-4"`.
Then stage A alone, the demo's own stage B and every variant are evaluated on the demo's pairs:
one draw with and without the user, and the best of 8 under the recipe's reward (stage A alone
is scored with the demo run's reward and statistics, the reward it would be trained on).

    python benchmarks/trainer_comparison.py --demo demo-out --out /tmp/tc [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

METHODS = "icg-nouser-single,icg-single,icg"
FIELDS = ("true_ctr", "true_taste_match", "fidelity_motif", "true_aesthetic")
DEFAULT_VARIANTS = ["stage A + ranked (RAFT, best of 8):trainer=ranked"]


def icg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "icg", *map(str, args)], check=True)


def parse_variant(spec: str) -> tuple[str, dict[str, object]]:
    """``"NAME:key=value,key.sub=value"`` -> (NAME, {key: value}); values are YAML scalars."""
    name, sep, body = spec.rpartition(":")
    if not sep or not name or not body:
        raise SystemExit(f"--variant {spec!r}: expected NAME:key=value[,key=value]")
    overrides = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {spec!r}: {item!r} is not key=value")
        value = yaml.safe_load(value)
        try:  # YAML 1.1 reads "3e-4" as a string
            value = float(value) if isinstance(value, str) else value
        except ValueError:
            pass
        overrides[key.strip()] = value
    return name, overrides


def variant_config(cfg: dict, overrides: dict[str, object]) -> dict:
    """The demo's stage-B config without its paths, with ``overrides`` (``a.b`` sets a nested key)."""
    out = {k: v for k, v in cfg.items() if k not in ("data", "init", "out", "preference")}
    for key, value in overrides.items():
        head, _, sub = key.partition(".")
        if sub:
            out[head] = {**out[head], sub: value}
        else:
            out[key] = value
    return out


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
    parser.add_argument(
        "--variant", action="append", help="NAME:key=value[,key=value] (stage-B config fields)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    demo, out = args.demo, args.out
    draft = demo / "run" / "icg"
    cfg = yaml.safe_load((draft / "config.yaml").read_text())
    # the demo's pairs and draws come from the world's seed (training may use `--train-seed`)
    seed = int(yaml.safe_load((demo / "world" / "world.yaml").read_text())["seed"])
    variants = dict(map(parse_variant, args.variant or DEFAULT_VARIANTS))
    out.mkdir(parents=True, exist_ok=True)

    runs: dict[str, Path] = {}
    # stage A alone, scored with the recipe's reward
    align = out / "align-only"
    shutil.copytree(
        demo / "run" / "align" / "adapter", align / "icg" / "adapter", dirs_exist_ok=True
    )
    for f in ("config.yaml", "reward_stats.safetensors"):
        shutil.copy(draft / f, align / "icg" / f)
    runs["stage A only"] = align
    runs["stage A + stage B (the recipe)"] = demo / "run"
    train_s = {}
    for name, overrides in variants.items():
        run = out / re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
        run.mkdir(parents=True, exist_ok=True)
        (run / "stage-b.yaml").write_text(yaml.safe_dump(variant_config(cfg, overrides)))
        t0 = time.time()
        if not (run / "icg" / "adapter").is_dir():
            icg(
                "train", "reward", "--data", demo / "world", "--init", demo / "run" / "align",
                "--preference", demo / "run" / "preference", "--out", run / "icg",
                "--config", run / "stage-b.yaml", "--overwrite",
            )  # fmt: skip
        train_s[name] = round(time.time() - t0, 1)  # 0 when an earlier call trained it
        runs[name] = run

    rows = {}
    for i, (name, run) in enumerate(runs.items()):
        m = eval_run(
            demo, run, out / "eval" / str(i), seed, args.users, args.items, args.candidates
        )
        rows[name] = {
            meth: {f: m["methods"][meth][f] for f in FIELDS} for meth in METHODS.split(",")
        } | {"personal_gain": m["personal_gain"]}
    result = {
        "demo": str(demo),
        "variants": {name: variants.get(name, {}) for name in rows},
        "train_s": train_s,
        "runs": rows,
    }
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
