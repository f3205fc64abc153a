"""`icg demo`: the whole ICG loop on the embedded default (CoverWorld + coverworld-tiny).

    world → preference → align (stage A) → reward (stage B: icg and the single-reward variants)
          → generate (best-of-K under each run's reward) + evaluate every method
          → DIR/eval/report.html

Every stage writes into ``DIR``; the world and the training stages are skipped when their output
is already there, so an interrupted demo continues where it stopped (training stages resume from
their checkpoints). The evaluation always reruns, so the report reflects the current code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console

from icg.config import (
    DEFAULT_BASE,
    DEFAULT_GUIDANCE,
    DEFAULT_MLLM,
    DEFAULT_STEPS,
    read_yaml_mapping,
)
from icg.data import load_dataset
from icg.evaluation.preference_eval import TruthProbe
from icg.evaluation.run import EvalConfig, evaluate_run
from icg.layout import (
    ADAPTER_DIR,
    ALIGN_RUN,
    CHECKPOINTS_DIR,
    ICG_CONFIG_FILE,
    PREFERENCE_CONFIG_FILE,
    PREFERENCE_RUN,
    REJECTS_DIR,
    REPORT_FILE,
    RUN_CONFIG_FILE,
    WORLD_CONFIG_FILE,
)
from icg.models.icg_model import ICGModel
from icg.training.align import AlignConfig, run_align
from icg.training.preference import PreferenceConfig, train_preference
from icg.training.reward import RewardConfig, run_reward
from icg.training.reward_config import DEFAULT_REWARDS
from icg.world.config import WorldConfig
from icg.world.generate import generate_world

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and budgets of one demo run (`FULL` or `QUICK`)."""

    n_items: int
    n_users: int
    n_impressions: int
    align_steps: int
    reward_steps: int
    eval_users: int
    eval_items: int
    reward_batch: int = 4
    reward_lr: float = 1e-3
    drift_token_weight: float = 0.1
    # ICG draws from pure noise with CFG and keeps the best of K draws under each run's own
    # reward: at this training budget most of the gain over one draw comes from that
    # selection (README, "Results of the full demo")
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    # user guidance w_u of every draw (stage-B sampling and evaluation): 1 is the plain draw
    user_guidance: float = 1.0
    strength: float = 1.0
    candidates: int = 8
    probe_pairs: int = 48
    # `icg` is the recipe (`DEFAULT_REWARDS`)
    rewards: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"icg": dict(DEFAULT_REWARDS)}
    )
    # the single-reward ablation runs (`ABLATIONS`) beside it
    ablations: bool = False


ABLATIONS = {
    "icg-aesthetic": {"aesthetic": 1.0},
    "icg-relevance": {"relevance": 1.0},
    "icg-preference": {"preference": 1.0},
}


# Many impressions are cheap to simulate and are what the preference model learns each user's
# taste from; the full demo simulates enough for the taste ranking to matter.
FULL = DemoPlan(
    n_items=300, n_users=150, n_impressions=300_000, align_steps=1000, reward_steps=60,
    eval_users=8, eval_items=12,
)  # fmt: skip
QUICK = DemoPlan(
    n_items=100, n_users=50, n_impressions=20_000, align_steps=40, reward_steps=15,
    eval_users=4, eval_items=6, probe_pairs=8, candidates=2, ablations=True,
)  # fmt: skip


def smoke_test_banner(plan: DemoPlan) -> str:
    """What the quick demo's report and console say first: its budget is a smoke test."""
    return (
        f"Smoke test, not a result: `icg demo --quick` trains on a {plan.n_items}-item world for "
        f"{plan.align_steps} stage-A and {plan.reward_steps} stage-B steps, keeps the best of "
        f"{plan.candidates} draws and scores {plan.eval_users * plan.eval_items} pairs. It shows "
        "that every stage runs; how the methods rank here says nothing about ICG. "
        "`make demo` (`icg demo`, the full recipe) gives the result."
    )


def run_demo(
    out: Path | str,
    *,
    quick: bool = False,
    seed: int = 3,
    train_seed: int | None = None,
    plan: DemoPlan | None = None,
    ablations: bool | None = None,
    base: str = DEFAULT_BASE,
    mllm: str = DEFAULT_MLLM,
) -> Path:
    """Run every stage into ``out`` (`QUICK` or `FULL`, or ``plan``); returns the report path.
    ``seed`` makes the world and the evaluation's draws; ``train_seed`` (default ``seed``) the
    preference model's and both stages' training, so that training runs on one world can be
    compared to see how much of a difference is the training's own noise.
    ``ablations`` overrides the plan's choice of training the single-reward runs. ``base`` and
    ``mllm`` (a path, hub id or ``zoo:`` name) are the models stage A is built on; stage B and
    the evaluation take them from stage A's record.

    Raises:
        DemoFolderError: when ``out`` holds a stage A built on other models than
            ``base``/``mllm`` or trained with another seed than ``train_seed``.
    """
    smoke_test = quick and plan is None  # the quick budget, whatever its ablations
    plan = plan or (QUICK if quick else FULL)
    train_seed = seed if train_seed is None else train_seed
    if ablations is not None:
        plan = replace(plan, ablations=ablations)
    out = Path(out)
    console = Console(stderr=True)
    banner = smoke_test_banner(plan) if smoke_test else ""
    if banner:
        console.print(f"[bold yellow]{banner}[/]", highlight=False, soft_wrap=True)
    world, run = out / "world", out / "run"
    timings: dict[str, float] = {}

    def stage(name: str, done: bool, fn) -> None:
        if done:
            console.print(f"[bold]{name}[/]: done already, skipped")
            return
        console.print(f"[bold]{name}[/] ...")
        t0 = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        console.print(f"[bold]{name}[/]: {timings[name]:.1f} s")

    cfg = WorldConfig(
        seed=seed, n_items=plan.n_items, n_users=plan.n_users, n_impressions=plan.n_impressions
    )
    stage(
        "world",
        (world / WORLD_CONFIG_FILE).is_file(),
        lambda: generate_world(world, cfg, overwrite=True),
    )
    data = load_dataset(world, rejects_dir=out / REJECTS_DIR)
    if not data.report.usable:
        raise RuntimeError(
            f"{world}: the generated world is not usable: {data.report.problems[:3]}"
        )
    stage(
        "preference",
        (run / PREFERENCE_RUN / PREFERENCE_CONFIG_FILE).is_file(),
        lambda: train_preference(world, run / PREFERENCE_RUN, PreferenceConfig(seed=train_seed)),
    )
    align_record = run / ALIGN_RUN / ADAPTER_DIR / ICG_CONFIG_FILE
    if align_record.is_file():
        _check_stage_a(run / ALIGN_RUN, base=base, mllm=mllm, seed=train_seed)
    stage(
        "align",
        align_record.is_file(),
        lambda: run_align(
            AlignConfig(
                data=world,
                out=run / ALIGN_RUN,
                max_steps=plan.align_steps,
                seed=train_seed,
                preference=run / PREFERENCE_RUN,
                base=base,
                mllm=mllm,
            ),  # fmt: skip
            resume=(run / ALIGN_RUN / CHECKPOINTS_DIR).is_dir(),
        ),
    )
    # monitoring only: the probe's truth metrics are logged, never part of a loss
    probe = [TruthProbe(world, num_pairs=plan.probe_pairs)]
    for name, weights in {**plan.rewards, **(ABLATIONS if plan.ablations else {})}.items():
        reward_cfg = RewardConfig(
            data=world, init=run / ALIGN_RUN, out=run / name, rewards=weights, seed=train_seed,
            preference=run / PREFERENCE_RUN, max_steps=plan.reward_steps,
            batch_size=plan.reward_batch, num_inference_steps=plan.num_inference_steps,
            guidance_scale=plan.guidance_scale, learning_rate=plan.reward_lr,
            drift_token_weight=plan.drift_token_weight, strength=plan.strength,
            user_guidance=plan.user_guidance, probe_every=max(1, plan.reward_steps // 4),
        )  # fmt: skip
        stage(
            f"reward {name}",
            (run / name / ADAPTER_DIR / ICG_CONFIG_FILE).is_file(),
            lambda c=reward_cfg: run_reward(
                c, resume=(c.out / CHECKPOINTS_DIR).is_dir(), callbacks=probe
            ),
        )
    evaluation = out / "eval"
    eval_cfg = EvalConfig(
        n_users=plan.eval_users, n_items=plan.eval_items,
        num_inference_steps=plan.num_inference_steps, guidance_scale=plan.guidance_scale,
        strength=plan.strength, candidates=plan.candidates, seed=seed,
        user_guidance=plan.user_guidance,
    )  # fmt: skip
    stage(
        "evaluate",
        False,
        lambda: evaluate_run(world, run, evaluation, eval_cfg, overwrite=True, banner=banner),
    )
    logger.info("demo plan %s, stage seconds %s", asdict(plan), timings)
    if banner:  # again at the end, beside the report's path
        console.print(f"[bold yellow]{banner}[/]", highlight=False, soft_wrap=True)
    return evaluation / REPORT_FILE


class DemoFolderError(ValueError):
    """A demo folder that cannot be continued with the requested models or training seed."""


def _check_stage_a(align_dir: Path, *, base: str, mllm: str, seed: int) -> None:
    """Refuse to continue a demo folder whose stage A was built on other models or trained
    with another seed (its later stages would silently be the other run's)."""
    record = ICGModel.read_config(align_dir / ADAPTER_DIR)
    config = align_dir / RUN_CONFIG_FILE
    if config.is_file():
        record["seed"] = read_yaml_mapping(config).get("seed")
    wanted = {"base_model": base, "mllm": mllm, "seed": seed}
    other = {k: record.get(k) for k, v in wanted.items() if record.get(k) not in (None, v)}
    if other:
        raise DemoFolderError(
            f"stage A was trained on {other}, not {wanted} ({align_dir}); "
            "use a new --out folder for other models or another training seed"
        )
