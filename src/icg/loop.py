"""`icg loop`: covers in the wild, round after round.

Each round r (folder OUT/round_<r>/):

    covers/      the current ICG run's covers (round 1: RUN/<start>): ``batch`` (default), an
                 `icg batch` output, one draw per (k-means user segment, item), every user shown
                 their segment's cover; ``pairs``, one draw per (user, item) of `experiment_pairs`
    ab/          a simulated A/B of those covers against the platform's (`icg world ab`)
    report/      its analysis (`icg ab report`)
    data/        the world's impressions plus every round's A/B impressions so far (no truth/)
    preference/  the preference model retrained on data/ (`icg train preference`) with RUN/
                 preference's recorded config
    icg/         stage B from RUN/align with that reward (`icg train reward`): next round's run

Only the reward changes between RUN/<start> and a round's stage B: stage B trains on the world's
own folder (its pair pool and clicked covers come from the impressions, so training on data/
would change its random stream), with the seed recorded in RUN/<start>'s run config; the
retrained preference model takes the config and seed recorded in RUN/preference
(`inherited_seed`), so it differs from the run's reward by its data alone.

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
from typing import Any, Literal

import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from icg.ab import ab_report, load_log, write_report
from icg.batch import BatchConfig, run_batch
from icg.config import DEFAULT_GUIDANCE, DEFAULT_STEPS, read_yaml_mapping
from icg.data import load_dataset
from icg.generation import generate_covers
from icg.io import atomic_dir, atomic_path, atomic_write_json
from icg.layout import (
    PREFERENCE_RUN,
    RUN_CONFIG_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    TRAIN_CONFIG_FILE,
)
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
    covers: Literal["pairs", "batch"] = Field(
        "batch",
        description="batch: one cover per (user segment, item), shown to every user of the "
        "segment; pairs: one per (user, item) of the first `users` users x `items` items",
    )
    users: int = Field(8, ge=1, description="pairs: users (with history) the covers are drawn for")
    items: int | None = Field(12, ge=1, description="the first N items (None: every item)")
    segments: int = Field(4, ge=1, description="batch: k-means user segments")
    threads: int | None = Field(None, ge=1, description="batch: torch threads of its worker")
    impressions: int = Field(100_000, ge=1, description="impressions per round's A/B")
    num_inference_steps: int = Field(DEFAULT_STEPS, ge=1)
    guidance_scale: float = Field(DEFAULT_GUIDANCE, ge=1.0)
    rewards: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_REWARDS))
    reward_steps: int = Field(60, ge=1)
    preference: dict[str, Any] = Field(
        default_factory=dict,
        description="PreferenceConfig overrides (over RUN/preference's recorded config)",
    )
    reward: dict[str, Any] = Field(default_factory=dict, description="RewardConfig overrides")
    reward_seed: int | None = Field(
        None, description="stage B's seed (None: the one recorded in RUN/<start>)"
    )
    preference_seed: int | None = Field(
        None, description="the preference retrain's seed (None: the one in RUN/preference)"
    )
    seed: int = Field(0, description="the covers' draws; round r's A/B has seed + r")


def experiment_items(world: Path, items: int | None) -> list[str]:
    """The first `items` item ids in sorted order (None: every item)."""
    return sorted(pd.read_parquet(world / "items.parquet")["item_id"].astype(str))[:items]


def experiment_pairs(world: Path, users: int, items: int | None) -> pd.DataFrame:
    """The first `users` users with impressions x the first `items` items (sorted ids): the
    pairs a ``pairs`` round draws covers for (read from the platform tables only)."""
    seen = pq.read_table(world / "impressions.parquet", columns=["user_id"]).column(0)
    user_ids = sorted(set(seen.to_pylist()))[:users]
    item_ids = experiment_items(world, items)
    return pd.DataFrame(
        [(u, i) for u in user_ids for i in item_ids], columns=["user_id", "item_id"]
    )


def inherited_seed(folder: Path, files: tuple[str, ...], override: int | None, fallback: int,
                   what: str) -> int:  # fmt: skip
    """The seed a loop step trains with: ``override`` if set, else the ``seed`` recorded in the
    first of ``files`` under ``folder`` that exists (a YAML config, or ``run.json``'s
    ``config``), else ``fallback`` (with a warning).

    Raises:
        ValueError: the recorded seed is not an integer (names the file).
    """
    if override is not None:
        return override
    for name in files:
        file = folder / name
        if not file.is_file():
            continue
        values = read_yaml_mapping(file)  # JSON is YAML
        values = values.get("config", {}) if name == RUN_FILE else values
        seed = values.get("seed") if isinstance(values, dict) else None
        if seed is None:
            continue
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{file}: seed: expected an integer, got {seed!r}")
        logger.info("%s: seed %d, as recorded in %s", what, seed, file)
        return seed
    logger.warning("%s: no seed recorded under %s; using the loop's seed %d", what, folder,
                   fallback)  # fmt: skip
    return fallback


def round_arm(cfg: LoopConfig, root: Path) -> Path:
    """The A/B arm that shows a round's covers (`icg.world.ab.arm_covers`): their manifest
    (``pairs``) or the `icg batch` output folder (``batch``)."""
    return root / "covers" / "manifest.parquet" if cfg.covers == "pairs" else root / "covers"


def draw_round_covers(cfg: LoopConfig, pipe: Any, adapter: Path, root: Path) -> None:
    """Draw a round's covers into ``root/covers`` (`round_arm` is the A/B arm showing them).

    Args:
        cfg: the loop's configuration (``covers`` picks the design).
        pipe: the current run's `ICGPipeline`.
        adapter: the current run's folder (recorded in the batch's plan).
        root: the round's folder.
    """
    out = root / "covers"
    if cfg.covers == "pairs":
        pairs = experiment_pairs(cfg.world, cfg.users, cfg.items)
        generate_covers(pipe, load_dataset(cfg.world, check_images=False), pairs, out,
                        method="icg", seed=cfg.seed, num_inference_steps=cfg.num_inference_steps,
                        guidance_scale=cfg.guidance_scale)  # fmt: skip
        return
    wanted = None
    if cfg.items is not None:  # every user x the first `items` items
        users = pd.read_parquet(cfg.world / "users.parquet", columns=["user_id"])["user_id"]
        items = experiment_items(cfg.world, cfg.items)
        wanted = root / "batch-pairs.parquet"
        with atomic_path(wanted) as tmp:
            pd.DataFrame([(str(u), i) for u in users for i in items],
                         columns=["user_id", "item_id"]).to_parquet(tmp, index=False)  # fmt: skip
    batch = BatchConfig(
        run=adapter, data=cfg.world, out=out, segments=cfg.segments, segment_by="kmeans",
        candidates=1, pick="segment", engine="local", seed=cfg.seed, threads=cfg.threads,
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
        pairs=wanted,
    )  # fmt: skip
    result = run_batch(batch, pipe=pipe)
    logger.info("covers: %d segments x %d items, %d drawn", result.segments,
                result.units // max(result.segments, 1), result.images)  # fmt: skip


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
    start = cfg.run / cfg.start
    reward_seed = inherited_seed(start, (RUN_CONFIG_FILE, RUN_FILE), cfg.reward_seed, cfg.seed,
                                 "stage B")  # fmt: skip
    preference_seed = inherited_seed(cfg.run / PREFERENCE_RUN, (TRAIN_CONFIG_FILE, RUN_FILE),
                                     cfg.preference_seed, cfg.seed, "preference")  # fmt: skip
    recorded = cfg.run / PREFERENCE_RUN / TRAIN_CONFIG_FILE
    recorded_preference = read_yaml_mapping(recorded) if recorded.is_file() else {}
    adapter, rounds, spent = start, [], 0
    for r in range(1, cfg.rounds + 1):
        root = cfg.out / f"round_{r}"
        ab, report = root / "ab", root / "report"
        arm = round_arm(cfg, root)
        done = arm if cfg.covers == "pairs" else arm / SUMMARY_FILE
        if _todo(f"round {r}: covers", done):
            draw_round_covers(cfg, load(adapter), adapter, root)
        if _todo(f"round {r}: A/B", ab / "experiment.json"):
            simulate_ab(cfg.world, {"control": "reference", "icg": str(arm)},
                        cfg.impressions, cfg.seed + r, ab, overwrite=True)  # fmt: skip
        if _todo(f"round {r}: report", report / "ab.json"):
            write_report(ab_report(load_log(ab, "arm"), "arm", "control"), report)
        data = root / "data"
        if _todo(f"round {r}: logs", data / "impressions.parquet"):
            experiments = [cfg.out / f"round_{k}" / "ab" for k in range(1, r + 1)]
            merge_logs(cfg.world, experiments, data)
        pref = root / "preference"
        if _todo(f"round {r}: preference", pref / "config.json"):
            pref_cfg = PreferenceConfig(**{**recorded_preference, "seed": preference_seed,
                                           **cfg.preference})  # fmt: skip
            train_preference(data, pref, pref_cfg, towers=towers, overwrite=True)
        icg = root / "icg"
        if _todo(f"round {r}: stage B", icg / "adapter" / "icg_config.json"):
            # the world's folder, not data/: stage B's pair pool (and clicked covers) come from
            # the impressions, so only the reward differs from RUN/<start>'s stage B
            reward_cfg = RewardConfig(**{
                "data": cfg.world, "init": cfg.run / "align", "out": icg, "preference": pref,
                "rewards": cfg.rewards, "max_steps": cfg.reward_steps, "seed": reward_seed,
                "num_inference_steps": cfg.num_inference_steps,
                "guidance_scale": cfg.guidance_scale, **cfg.reward,
            })  # fmt: skip
            run_reward(reward_cfg, resume=(icg / "checkpoints").is_dir(),
                       **(reward_parts() if reward_parts else {}))  # fmt: skip
        rounds.append(_round_summary(r, root, spent))
        spent = rounds[-1]["impressions_total"]
        adapter = icg
    summary = {"config": cfg.model_dump(mode="json"),
               "seeds": {"reward": reward_seed, "preference": preference_seed},
               "rounds": rounds}  # fmt: skip
    atomic_write_json(cfg.out / "loop.json", summary)
    return summary


def _round_summary(r: int, root: Path, spent: int) -> dict:
    experiment = json.loads((root / "ab" / "experiment.json").read_text())
    report = json.loads((root / "report" / "ab.json").read_text())
    lift = report["lift"].get("icg", {}).get("ctr", {})
    arms = pd.read_parquet(root / "ab" / "impressions.parquet", columns=["arm"])["arm"]
    return {
        "round": r,
        "online_lift": lift.get("lift"), "online_low": lift.get("low"),
        "online_high": lift.get("high"), "p_value": lift.get("p_value"),
        "offline_true_ctr": experiment["offline_true_ctr"],
        "offline_lift": experiment["offline_lift"].get("icg"),
        "impressions": experiment["impressions"],
        "icg_impressions": int((arms == "icg").sum()),
        "impressions_total": spent + experiment["impressions"],
        "report": str(root / "report" / "ab.html"),
    }  # fmt: skip
