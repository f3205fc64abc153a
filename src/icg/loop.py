"""`icg loop`: covers in the wild, round after round.

Each round r (folder OUT/round_<r>/):

    covers/      one draw per (user, item) pair from the current ICG run (round 1: RUN/<start>)
    ab/          a simulated A/B of those covers against the platform's (`icg world ab`)
    report/      its analysis (`icg ab report`)
    data/        the world's impressions plus every round's A/B impressions so far (no truth/)
    preference/  the preference model retrained on data/ (`icg train preference`)
    icg/         stage B from RUN/align with that reward (`icg train reward`): next round's run

Every step is skipped when its output is there, so an interrupted loop resumes where it stopped;
OUT/loop.json gathers each round's online lift, the offline truth CTR of its covers and the
impressions it cost. Only the simulator (`icg.world.ab`) reads the world's truth.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from icg.ab import ab_report, load_log, write_report
from icg.config import DEFAULT_GUIDANCE, DEFAULT_STEPS
from icg.data import load_dataset
from icg.generation import generate_covers
from icg.io import atomic_dir, atomic_write_json
from icg.models.paths import resolve_adapter_dir
from icg.pipeline import ICGPipeline
from icg.training.preference import PreferenceConfig, train_preference
from icg.training.reward import RewardConfig, run_reward
from icg.training.reward_config import DEFAULT_REWARDS
from icg.world.ab import simulate_ab

logger = logging.getLogger(__name__)


class LoopConfig(BaseModel):
    """The closed loop's configuration (validated before any model is loaded)."""

    model_config = ConfigDict(extra="forbid")

    world: Path = Field(description="the CoverWorld the experiments run on")
    run: Path = Field(description="a run folder with align/ and the first round's ICG run")
    out: Path
    rounds: int = Field(3, ge=1)
    start: str = Field("icg", description="RUN/<start>: the run that draws round 1's covers")
    users: int = Field(8, ge=1, description="users (with history) the covers are drawn for")
    items: int = Field(12, ge=1, description="items the covers are drawn for")
    impressions: int = Field(100_000, ge=1, description="impressions per round's A/B")
    num_inference_steps: int = Field(DEFAULT_STEPS, ge=1)
    guidance_scale: float = Field(DEFAULT_GUIDANCE, ge=1.0)
    rewards: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_REWARDS))
    reward_steps: int = Field(60, ge=1)
    preference: dict[str, Any] = Field(
        default_factory=dict, description="PreferenceConfig overrides"
    )
    reward: dict[str, Any] = Field(default_factory=dict, description="RewardConfig overrides")
    seed: int = 0


def experiment_pairs(world: Path, users: int, items: int) -> pd.DataFrame:
    """The first `users` users with impressions x the first `items` items (sorted ids): the
    pairs every round draws covers for (read from the platform tables only)."""
    seen = pq.read_table(world / "impressions.parquet", columns=["user_id"]).column(0)
    user_ids = sorted(set(seen.to_pylist()))[:users]
    item_ids = sorted(pd.read_parquet(world / "items.parquet")["item_id"])[:items]
    return pd.DataFrame(
        [(u, i) for u in user_ids for i in item_ids], columns=["user_id", "item_id"]
    )


def merge_logs(world: Path, experiments: list[Path], out: Path) -> Path:
    """A platform folder of the world's tables, covers and impressions plus each experiment's
    impressions (event ids prefixed ``r<k>-``, covers copied under images/r<k>/); no truth/."""
    with atomic_dir(out) as tmp:
        for name in ("items.parquet", "users.parquet"):
            shutil.copy2(world / name, tmp / name)
        shutil.copytree(world / "images", tmp / "images")
        frames = [pd.read_parquet(world / "impressions.parquet")]
        for k, ab in enumerate(experiments, start=1):
            log = pd.read_parquet(ab / "impressions.parquet")
            log["event_id"] = f"r{k}-" + log["event_id"]
            generated = log["cover"].str.startswith("images/ab/")
            log.loc[generated, "cover"] = log.loc[generated, "cover"].str.replace(
                "images/ab/", f"images/r{k}/", n=1, regex=False
            )
            if (ab / "images" / "ab").is_dir():
                shutil.copytree(ab / "images" / "ab", tmp / "images" / f"r{k}")
            frames.append(log.drop(columns=["arm", "cover_id"]))
        pd.concat(frames, ignore_index=True).to_parquet(tmp / "impressions.parquet", index=False)
    return out


def _todo(name: str, output: Path) -> bool:
    """Whether a step still has to run: its output is not there yet (else it is skipped)."""
    if output.exists():
        logger.info("%s: done already, skipped", name)
        return False
    logger.info("%s ...", name)
    return True


def run_loop(
    cfg: LoopConfig,
    pipeline: Callable[[Path], Any] | None = None,
    towers=None,
    reward_parts: Callable[[], dict] | None = None,
) -> dict:
    """Run (or resume) `cfg.rounds` rounds and write OUT/loop.json.

    Args:
        cfg: the loop's configuration.
        pipeline: adapter folder -> an `ICGPipeline` (default: `ICGPipeline.from_pretrained`).
        towers: the CLIP the preference model embeds covers with (default: its config's).
        reward_parts: -> `run_reward`'s loaded parts (base, mllm, processor, rewards), fresh
            for each round (default: loaded from the records).
    """
    load = pipeline or (lambda adapter: ICGPipeline.from_pretrained(resolve_adapter_dir(adapter)))
    pairs = experiment_pairs(cfg.world, cfg.users, cfg.items)
    world_data = load_dataset(cfg.world, check_images=False)
    adapter, rounds, spent = cfg.run / cfg.start, [], 0
    for r in range(1, cfg.rounds + 1):
        root = cfg.out / f"round_{r}"
        manifest, ab, report = root / "covers" / "manifest.parquet", root / "ab", root / "report"
        if _todo(f"round {r}: covers", manifest):
            generate_covers(load(adapter), world_data, pairs, manifest.parent, method="icg",
                            seed=cfg.seed, num_inference_steps=cfg.num_inference_steps,
                            guidance_scale=cfg.guidance_scale)  # fmt: skip
        if _todo(f"round {r}: A/B", ab / "experiment.json"):
            simulate_ab(cfg.world, {"control": "reference", "icg": str(manifest)},
                        cfg.impressions, cfg.seed + r, ab, overwrite=True)  # fmt: skip
        if _todo(f"round {r}: report", report / "ab.json"):
            write_report(ab_report(load_log(ab, "arm"), "arm", "control"), report)
        data = root / "data"
        if _todo(f"round {r}: logs", data / "impressions.parquet"):
            experiments = [cfg.out / f"round_{k}" / "ab" for k in range(1, r + 1)]
            merge_logs(cfg.world, experiments, data)
        pref = root / "preference"
        if _todo(f"round {r}: preference", pref / "config.json"):
            pref_cfg = PreferenceConfig(**{"seed": cfg.seed, **cfg.preference})
            train_preference(data, pref, pref_cfg, towers=towers, overwrite=True)
        icg = root / "icg"
        if _todo(f"round {r}: stage B", icg / "adapter" / "icg_config.json"):
            reward_cfg = RewardConfig(**{
                "data": data, "init": cfg.run / "align", "out": icg, "preference": pref,
                "rewards": cfg.rewards, "max_steps": cfg.reward_steps, "seed": cfg.seed,
                "num_inference_steps": cfg.num_inference_steps,
                "guidance_scale": cfg.guidance_scale, **cfg.reward,
            })  # fmt: skip
            run_reward(reward_cfg, resume=(icg / "checkpoints").is_dir(),
                       **(reward_parts() if reward_parts else {}))  # fmt: skip
        rounds.append(_round_summary(r, root, spent))
        spent = rounds[-1]["impressions_total"]
        adapter = icg
    summary = {"config": cfg.model_dump(mode="json"), "rounds": rounds}
    atomic_write_json(cfg.out / "loop.json", summary)
    return summary


def _round_summary(r: int, root: Path, spent: int) -> dict:
    experiment = json.loads((root / "ab" / "experiment.json").read_text())
    report = json.loads((root / "report" / "ab.json").read_text())
    lift = report["lift"].get("icg", {}).get("ctr", {})
    return {
        "round": r,
        "online_lift": lift.get("lift"), "online_low": lift.get("low"),
        "online_high": lift.get("high"), "p_value": lift.get("p_value"),
        "offline_true_ctr": experiment["offline_true_ctr"],
        "offline_lift": experiment["offline_lift"].get("icg"),
        "impressions": experiment["impressions"],
        "impressions_total": spent + experiment["impressions"],
        "report": str(root / "report" / "ab.html"),
    }  # fmt: skip
