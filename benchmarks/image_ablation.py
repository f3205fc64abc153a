"""What ICG gains from the reference image: the demo's `icg` against the same recipe whose
MLLM reads the title only (`icg train align --no-read-image`), on the demo's own pairs.

Trains stage A (`read_image=False`) and stage B with the demo's settings into
``DEMO/run-noimage``, evaluates `icg` (best of K) and `icg-single` there on the demo's
evaluation pairs, and prints both runs side by side (reads the truth; not a test):

    python benchmarks/image_ablation.py --demo demo-out [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from icg.demo import FULL
from icg.evaluation.run import EvalConfig, evaluate_run
from icg.training.align import AlignConfig, run_align
from icg.training.reward import RewardConfig, run_reward
from icg.training.reward_config import DEFAULT_REWARDS

METHODS = ["icg", "icg-single"]  # reference and oracle are evaluated too: the lift needs them
COLUMNS = ["true_ctr", "lift_fraction", "fidelity_motif", "fidelity_palette", "true_taste_match"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="an `icg demo` output folder")
    parser.add_argument("--seed", type=int, default=3, help="the demo's seed")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    plan, world, run = FULL, args.demo / "world", args.demo / "run"
    blind = args.demo / "run-noimage"
    align = blind / "align"
    if not (align / "adapter" / "icg_config.json").is_file():
        cfg = AlignConfig(
            data=world, out=align, max_steps=plan.align_steps, seed=args.seed,
            preference=run / "preference", read_image=False,
        )  # fmt: skip
        run_align(cfg, resume=(align / "checkpoints").is_dir())
    if not (blind / "icg" / "adapter" / "icg_config.json").is_file():
        reward = RewardConfig(
            data=world, init=align, out=blind / "icg", rewards=dict(DEFAULT_REWARDS),
            seed=args.seed, preference=run / "preference", max_steps=plan.reward_steps,
            batch_size=plan.reward_batch, num_inference_steps=plan.num_inference_steps,
            guidance_scale=plan.guidance_scale, learning_rate=plan.reward_lr,
            drift_token_weight=plan.drift_token_weight, strength=plan.strength,
            user_guidance=plan.user_guidance,
        )  # fmt: skip
        run_reward(reward, resume=(blind / "icg" / "checkpoints").is_dir())
    if not (blind / "preference").exists():
        os.symlink((run / "preference").resolve(), blind / "preference")
    demo_eval = json.loads((args.demo / "eval" / "metrics.json").read_text())
    cfg = EvalConfig(  # the demo's pairs: `choose_pairs` is a function of these sizes and seed
        methods=["reference", "oracle", *METHODS], n_users=plan.eval_users, n_items=plan.eval_items,
        num_inference_steps=plan.num_inference_steps,
        guidance_scale=plan.guidance_scale, strength=plan.strength, candidates=plan.candidates,
        seed=args.seed, user_guidance=plan.user_guidance,
    )  # fmt: skip
    ablated = evaluate_run(world, blind, blind / "eval", cfg, overwrite=True)
    result = {
        "demo": str(args.demo),
        "plan": asdict(plan),
        "n_pairs": ablated["methods"]["icg"]["n_pairs"],
        "reads_image": {m: {c: demo_eval["methods"][m][c] for c in COLUMNS} for m in METHODS},
        "title_only": {m: {c: ablated["methods"][m][c] for c in COLUMNS} for m in METHODS},
    }
    for m in METHODS:
        a, b = result["reads_image"][m], result["title_only"][m]
        print(f"{m:12s} " + "  ".join(f"{c} {a[c]:.3f} vs {b[c]:.3f}" for c in COLUMNS))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
