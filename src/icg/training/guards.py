"""Stage B's guard rails around any trainer's loop: the EMA of the weights and the tripwire.

`StageBGuards` is what `icg.training.stage_b.StageBTrainer` calls at four points: after each
optimizer step (`after_step`: the EMA update), after each step's logging (`check`: the tripwire,
evaluated with the weights that draw), in every checkpoint (`checkpoint_parts`, `restore`), and
when the loop ends (`finish`: the model is left holding the weights the run saves, i.e. the
tripwire's best snapshot when it fired, else the EMA, else the raw weights).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from icg.training.ema import WeightEMA, ema_checkpoint_parts, named_parameters_of, restore_ema
from icg.training.tripwire import Tripwire, held_out_score_reward

if TYPE_CHECKING:
    from icg.rewards.factory import RewardSources
    from icg.training.stage_b import StageBTrainer

__all__ = ["StageBGuards"]


class StageBGuards:
    """The EMA and the tripwire of one stage-B trainer (after its models, pool and rewards).

    Args:
        trainer: the trainer being set up.
        sources: where the held-out preference model's CLIP comes from.
        heldout_reward: the held-out reward (default: loaded from ``tripwire_preference``).
    """

    def __init__(self, trainer: StageBTrainer, sources: RewardSources, heldout_reward=None) -> None:
        cfg = trainer.config
        named = named_parameters_of(trainer.icg, trainer.icg.trainable_parameters(), "icg.")
        if trainer.lora_parameters:
            named |= named_parameters_of(trainer.unet, trainer.lora_parameters, "unet.")
        self.trainer, self.named = trainer, named
        self.ema = None if cfg.ema_decay is None else WeightEMA(named, cfg.ema_decay)
        self.tripwire: Tripwire | None = None
        if cfg.tripwire_preference is not None:
            if "preference" in trainer.rewards.rewards:
                train = trainer.rewards.rewards["preference"]
            else:  # the preference reward is not one of the training rewards
                train = held_out_score_reward(cfg.preference, sources.towers)
            if heldout_reward is None:
                heldout_reward = held_out_score_reward(cfg.tripwire_preference, sources.towers)
            device = trainer.accelerator.device
            self.tripwire = Tripwire(trainer, train.to(device), heldout_reward.to(device))

    @property
    def stopped(self) -> bool:
        """Whether the tripwire has fired (the run trains no further)."""
        return self.tripwire is not None and self.tripwire.fired

    def restore(self, checkpoint: Path, state: Mapping) -> None:
        """Restore the EMA and the tripwire from a checkpoint."""
        restore_ema(self.ema, checkpoint, state)
        if self.tripwire is not None:
            self.tripwire.restore(checkpoint, state)

    def after_step(self) -> None:
        """Fold the new weights into the EMA."""
        if self.ema is not None:
            self.ema.update()

    @contextmanager
    def drawing_weights(self) -> Iterator[None]:
        """Within the block the model holds the weights that draw (the EMA when on)."""
        with self.ema.applied() if self.ema is not None else nullcontext():
            yield

    def check(self) -> bool:
        """Evaluate the tripwire when due at the trainer's step; whether it has fired."""
        if self.tripwire is None:
            return False
        with self.drawing_weights():
            drawing = {n: p.detach() for n, p in self.named.items()}
            stats = self.trainer.rewards.stats_state()
            return self.tripwire.check(self.trainer.step, drawing, stats)

    def checkpoint_parts(self) -> tuple[dict, dict]:
        """Trainer-state entries and named tensors a checkpoint keeps for the guards."""
        state, tensors = ema_checkpoint_parts(self.ema)
        if self.tripwire is not None:
            more_state, more_tensors = self.tripwire.checkpoint_parts()
            state, tensors = state | more_state, tensors | more_tensors
        return state, tensors

    @torch.no_grad()
    def finish(self) -> None:
        """Leave the weights the run saves in the model: the tripwire's best snapshot (with its
        reward statistics) when it fired, else the EMA, else the raw weights as they are."""
        if self.stopped:
            weights, stats = self.tripwire.best_weights()
            for name, p in self.named.items():
                p.copy_(weights[name].to(p.device, p.dtype))
            self.trainer.rewards.load_stats_state(stats)
        elif self.ema is not None:
            self.ema.copy_to_model()
