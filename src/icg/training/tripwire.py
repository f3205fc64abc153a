"""The reward-hacking tripwire of stage B: a held-out preference model watches the training one.

Stage B ascends a reward built on a preference model fitted on one half of the click log
(``PreferenceConfig.log_half``); a second model, fitted on the other, disjoint half, never
enters the loss. Every ``tripwire_every`` steps both score the covers the current weights that
draw (the EMA when there is one) make for a fixed probe set of (user, item) pairs from fixed
noise, so two evaluations differ only by the weights (common random numbers). When the held-out
score falls while the training score rises for ``tripwire_patience`` evaluations in a row, the
generator is learning what only the training model rewards: the run stops, and its adapter is
the snapshot with the best held-out score (reward-model overoptimisation, Gao et al. 2023,
"Scaling laws for reward model overoptimization", Sec. 3: the gold score peaks, then falls,
while the proxy keeps rising; here the held-out model stands in for the gold one and nothing
reads the world's truth).

Everything the tripwire decides is a function of the scores, which are a function of the
weights; its state and the best snapshot are kept in checkpoints, so ``--resume`` is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from icg.artifacts import ArtifactError
from icg.checkpoints import load_tensors
from icg.config import read_yaml_mapping
from icg.layout import CURVES_FILE, TRAIN_CONFIG_FILE
from icg.models.preference import PreferenceModel
from icg.rewards.preference import PreferenceReward
from icg.training.common import step_generator
from icg.training.curves import append_curve

if TYPE_CHECKING:
    from icg.training.stage_b import StageBTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "BEST_TENSORS",
    "Tripwire",
    "TripwireState",
    "check_disjoint_halves",
    "held_out_score_reward",
]

BEST_TENSORS = "tripwire_best"  # ``<checkpoint>/tripwire_best.safetensors``
_STATS = "reward_stats."  # key prefix of the reward statistics inside the best snapshot
_PROBE_SALT = 7_919


@dataclass
class TripwireState:
    """What the tripwire has seen: every evaluation, the best one, the current streak.

    Args:
        evaluations: ``{"step", "train", "heldout"}`` per evaluation, in order.
        best_step: the step of the best held-out score (``None`` before the first evaluation).
        best_heldout: that score.
        streak: consecutive evaluations with the held-out score down and the training score up.
        fired_step: the step the tripwire fired at (``None``: it has not).
    """

    evaluations: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_heldout: float | None = None
    streak: int = 0
    fired_step: int | None = None

    def observe(self, step: int, train: float, heldout: float, patience: int) -> bool:
        """Record one evaluation; returns whether it is the new best by held-out score.

        A step counts towards the streak when the held-out score is below the previous
        evaluation's and the training score above it; any other step resets it. The tripwire
        fires once the streak reaches ``patience``.
        """
        if self.evaluations:
            last = self.evaluations[-1]
            hacked = heldout < last["heldout"] and train > last["train"]
            self.streak = self.streak + 1 if hacked else 0
        self.evaluations.append({"step": step, "train": train, "heldout": heldout})
        if self.streak >= patience and self.fired_step is None:
            self.fired_step = step
        best = self.best_heldout is None or heldout > self.best_heldout
        if best:
            self.best_step, self.best_heldout = step, heldout
        return best

    def to_json(self) -> dict[str, Any]:
        """The state as JSON (for the trainer state of a checkpoint)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "") -> TripwireState:
        """The state saved by `to_json` (`ArtifactError` naming ``source`` when malformed)."""
        try:
            return cls(
                evaluations=[dict(e) for e in data["evaluations"]],
                best_step=data["best_step"],
                best_heldout=data["best_heldout"],
                streak=int(data["streak"]),
                fired_step=data["fired_step"],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{source}: malformed 'tripwire' state ({err})") from err


def check_disjoint_halves(train: Path, heldout: Path) -> None:
    """Both preference models were fitted on the two different halves of one click log.

    Raises:
        ValueError: a model folder has no ``train_config.yaml``, or its ``log_half`` is not 0/1,
            or both used the same half (naming the files).
    """
    halves = []
    for role, folder in (("preference", train), ("tripwire_preference", heldout)):
        file = Path(folder) / TRAIN_CONFIG_FILE
        if not file.is_file():
            raise ValueError(f"{role}: {file} is missing; expected an `icg train preference` run")
        half = read_yaml_mapping(file).get("log_half")
        if half not in (0, 1):
            raise ValueError(
                f"{role}: {file} has log_half={half!r}; the tripwire needs two preference models "
                "fitted with log_half 0 and 1 (`icg train preference --log-half`)"
            )
        halves.append(half)
    if halves[0] == halves[1]:
        raise ValueError(
            f"tripwire_preference: fitted on the same log half ({halves[0]}) as preference; "
            "the held-out model must be fitted on the other half"
        )


class Tripwire:
    """The held-out check of one stage-B run (see the module docstring).

    Args:
        trainer: the trainer after its pool is built (the probe pairs come from its pool).
        train_reward: the training half's preference reward (the raw score, not normalised).
        heldout_reward: the held-out half's preference reward.
    """

    def __init__(self, trainer: StageBTrainer, train_reward, heldout_reward) -> None:
        cfg, pool = trainer.config, trainer.pool
        self.trainer, self.train_reward, self.heldout_reward = trainer, train_reward, heldout_reward
        self.every, self.patience = cfg.tripwire_every, cfg.tripwire_patience
        gen = step_generator(cfg.seed + _PROBE_SALT, 0)  # fixed pairs and noise for the whole run
        rows = torch.randint(len(pool.pairs), (cfg.tripwire_pairs,), generator=gen).tolist()
        self.items = [pool.pairs.at[r, "item_id"] for r in rows]
        self.users = [pool.pairs.at[r, "user_id"] for r in rows]
        h = pool.size // pool.vae_scale
        shape = (len(rows), trainer.latent_channels, h, h)  # FLUX: the VAE's, unpacked
        self.noise = torch.randn(shape, generator=gen)
        self.state = TripwireState()
        self.best: dict[str, torch.Tensor] | None = None  # the weights that drew best, by name

    @property
    def fired(self) -> bool:
        """Whether the tripwire has fired."""
        return self.state.fired_step is not None

    @torch.no_grad()
    def scores(self) -> tuple[float, float]:
        """Mean training and held-out preference scores of the probe set's covers, drawn by the
        live weights (the caller swaps in the weights that draw)."""
        t, cfg = self.trainer, self.trainer.config
        train, heldout = [], []
        for start in range(0, len(self.items), cfg.generation_batch):
            part = slice(start, start + cfg.generation_batch)
            items, users = self.items[part], self.users[part]
            tokens, emb = t.tokens(items, users)
            without = None
            if cfg.user_guidance != 1:
                without, _ = t.tokens(items, [None] * len(items))
            images, _ = t.sample(items, tokens, self.noise[part], 0, without)
            titles = [t.pool.titles[i] for i in items]
            train.append(self.train_reward(images, titles, emb, user_ids=users)[0].float().cpu())
            heldout.append(
                self.heldout_reward(images, titles, emb, user_ids=users)[0].float().cpu()
            )
        return float(torch.cat(train).mean()), float(torch.cat(heldout).mean())

    def check(self, step: int, drawing: Mapping[str, torch.Tensor], stats: Mapping) -> bool:
        """Evaluate at ``step`` when due; returns whether the tripwire has fired.

        Args:
            step: optimizer steps done.
            drawing: the weights that draw now, by name (kept when they are the best so far).
            stats: the reward statistics now (kept with them).
        """
        if self.fired or step % self.every:
            return self.fired
        train, heldout = self.scores()
        if self.state.observe(step, train, heldout, self.patience):
            self.best = {k: v.detach().cpu().clone() for k, v in drawing.items()}
            self.best |= {_STATS + k: v.detach().cpu().clone() for k, v in stats.items()}
        row = {"step": step, "reward/tripwire_train": train, "reward/tripwire_heldout": heldout}
        if self.trainer.accelerator.is_main_process:
            append_curve(self.trainer.config.out / CURVES_FILE, row)
        logger.info("tripwire at step %d: train %.4f, held-out %.4f", step, train, heldout)
        if self.fired:
            logger.warning(
                "tripwire fired at step %d: the held-out reward fell for %d evaluations while the "
                "training reward rose; keeping step %d (held-out %.4f)",
                step, self.patience, self.state.best_step, self.state.best_heldout,
            )  # fmt: skip
            if self.trainer.accelerator.is_main_process:
                fired = {"step": step, "reward/tripwire_fired": self.state.best_step}
                append_curve(self.trainer.config.out / CURVES_FILE, fired)
        return self.fired

    def checkpoint_parts(self) -> tuple[dict, dict]:
        """What a checkpoint keeps: ``({"tripwire": state}, {BEST_TENSORS: best})``."""
        tensors = {BEST_TENSORS: self.best} if self.best is not None else {}
        return {"tripwire": self.state.to_json()}, tensors

    def restore(self, checkpoint: Path, state: Mapping) -> None:
        """Restore the state and the best snapshot from a checkpoint.

        Raises:
            ArtifactError: the checkpoint was written without a tripwire, or is malformed.
        """
        if not isinstance(state.get("tripwire"), dict):
            raise ArtifactError(f"{checkpoint}: holds no tripwire state; written without one")
        self.state = TripwireState.from_json(state["tripwire"], source=str(checkpoint))
        self.best = None if self.state.best_step is None else load_tensors(checkpoint, BEST_TENSORS)

    def best_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The best snapshot: ``(weights by name, reward statistics)``."""
        if self.best is None:
            raise RuntimeError("the tripwire has no best snapshot yet")
        stats = {k.removeprefix(_STATS): v for k, v in self.best.items() if k.startswith(_STATS)}
        weights = {k: v for k, v in self.best.items() if not k.startswith(_STATS)}
        return weights, stats


def held_out_score_reward(folder: Path, towers_of) -> PreferenceReward:
    """The held-out preference reward of ``folder`` (raw logit score), its CLIP from ``towers_of``
    (a function of the CLIP name, e.g. `icg.rewards.factory.RewardSources.towers`)."""
    model = PreferenceModel.from_pretrained(str(folder))
    return PreferenceReward(model, towers_of(model.config.clip_name_or_path))
