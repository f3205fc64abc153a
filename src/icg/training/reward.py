"""Stage B end to end: the trainer table and `run_reward`.

Stage B aligns the stage-A ICG model to a weighted `MultiReward` without labels (ICG, EMNLP
2025, Sec. 3.4). Each trainer is one self-contained recipe file; what they share (models, the
pair pool, sampling, the drift anchor, saving) is `icg.training.stage_b.StageBTrainer`:

- ``ranked`` (`icg.training.ranked.RankedTrainer`): the generator learns from its own best draws;
- ``draft`` (`icg.training.draft.DraftTrainer`): DRaFT-K, the reward's gradient through the
  last K sampling steps;
- ``nft`` (`icg.training.nft.NFTTrainer`): DiffusionNFT, every draw of a round learned on the
  forward process, positive or negative by its reward.
- ``grpo`` (`icg.training.grpo.GRPOTrainer`): policy gradient on stochastic DDIM draws with
  per-pair advantages, a clipped ratio and a KL to stage A (DDPO / Flow-GRPO).

Every trainer runs inside the same guard rails (`icg.training.guards`): an EMA of the weights,
saved as the adapter, and the held-out reward-hacking tripwire (`icg.training.tripwire`).

A new trainer is a `StageBTrainer` subclass with a ``train()`` loop, registered in `TRAINERS`
(and allowed by `RewardConfig.trainer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.checkpoints import write_run_config
from icg.runs import start_run
from icg.training.draft import DraftTrainer
from icg.training.grpo import GRPOTrainer
from icg.training.nft import NFTTrainer
from icg.training.ranked import RankedTrainer
from icg.training.reward_config import RewardConfig
from icg.training.stage_b import Callback, StageBTrainer

__all__ = ["TRAINERS", "RewardConfig", "RewardResult", "run_reward", "trainer_class"]


@dataclass
class RewardResult:
    """What a finished stage-B run returns."""

    rewards: list[float]  # combined (normalised, weighted) reward per step (per round: ranked)
    adapter_dir: Path
    steps: int
    tripwire_step: int | None = None  # the step the tripwire fired at (None: it did not)


TRAINERS: dict[str, type[StageBTrainer]] = {
    "ranked": RankedTrainer,
    "draft": DraftTrainer,
    "nft": NFTTrainer,
    "grpo": GRPOTrainer,
}


def trainer_class(name: str) -> type[StageBTrainer]:
    """The stage-B trainer registered as ``name``.

    Raises:
        ValueError: no trainer has that name.
    """
    if name not in TRAINERS:
        raise ValueError(f"trainer: expected one of {sorted(TRAINERS)}, got {name!r}")
    return TRAINERS[name]


def run_reward(
    config: RewardConfig,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
    **parts: Any,
) -> RewardResult:
    """Stage B end to end: ``setup → train → save → cleanup``, with the configured trainer.
    The run folder is checked first (`icg.runs.start_run`: ``--resume`` continues only the
    same config, a fresh run into a used folder needs ``overwrite``)."""
    trainer_cls = trainer_class(config.trainer)
    start_run(config.out, config, kind="reward", resume=resume, overwrite=overwrite)
    trainer = trainer_cls(config, callbacks=callbacks, **parts)
    try:
        trainer.setup(resume=resume)
        if trainer.accelerator.is_main_process:
            write_run_config(config.out, config)
        history = trainer.train()
        adapter_dir = trainer.save()
    finally:
        trainer.cleanup()
    tripwire = trainer.guards.tripwire
    return RewardResult(
        rewards=history, adapter_dir=adapter_dir, steps=trainer.step,
        tripwire_step=None if tripwire is None else tripwire.state.fired_step,
    )  # fmt: skip
