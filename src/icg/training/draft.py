"""Stage B by DRaFT-K: the reward's gradient through the last K steps of the sampling chain.

Covers are sampled with the ICG pipeline for (user, item) pairs drawn from the logs (some users
dropped to cold start), scored by a `MultiReward` (aesthetic + relevance + personalized
preference), and the weighted reward is back-propagated through the last K denoising steps
(DRaFT-K, Clark et al. 2024, Sec. 3; K = 1 is close to ReFL, Xu et al. 2023, Sec. 4.2) into the
meta tokens, the refiner and the adapter (optionally a UNet LoRA). The truncation point is drawn
once per trajectory. The loss adds the drift anchor of `icg.training.stage_b.StageBTrainer`.

The recipe reads ``setup → train → save → cleanup``; every random draw of step ``s`` comes from
``(seed, process, s)``, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from tqdm.auto import tqdm

from icg.layout import CURVES_FILE
from icg.training.conditioning import FAMILIES
from icg.training.curves import append_curve
from icg.training.stage_b import StageBTrainer

logger = logging.getLogger(__name__)


def sample_truncation(num_steps: int, k: int, k_max: int | None, generator: torch.Generator) -> int:
    """The K of one trajectory, drawn ONCE before sampling starts.

    ``k_max=None``: DRaFT-K's fixed K (Clark et al. 2024, Sec. 3). Otherwise K is uniform in
    ``[k, min(k_max, num_steps)]``: a random truncation point as in ReFL (Xu et al. 2023,
    Sec. 4.2), which draws the step it stops at per sample. Drawing per step instead would
    give each step an independent coin and a biased, high-variance gradient (trl's fault).
    """
    hi = min(k_max if k_max is not None else k, num_steps)
    if hi <= k:
        return min(k, num_steps)
    return int(torch.randint(k, hi + 1, (1,), generator=generator))


class DraftTrainer(StageBTrainer):
    """Stage B, DRaFT-K: every step samples a batch of pairs with gradients through the last K
    steps and ascends their reward (`StageBTrainer` for ``setup``, ``save`` and ``cleanup``).
    On every family: the UNet's DDIM chain, or the SD3 / FLUX flow sampler."""

    families = FAMILIES

    def draw(self, step: int) -> dict[str, Any]:
        """The pairs, cold-start mask, K and initial noise of ``step`` (a function of the step)."""
        cfg, pool = self.config, self.pool
        gen = self.generator(step)
        rows = torch.randint(len(pool.pairs), (cfg.batch_size,), generator=gen).tolist()
        cold = (torch.rand(cfg.batch_size, generator=gen) < cfg.cold_start_fraction).tolist()
        k = sample_truncation(cfg.num_inference_steps, cfg.truncation_k, cfg.truncation_k_max, gen)
        h = pool.size // pool.vae_scale
        noise = torch.randn(cfg.batch_size, self.latent_channels, h, h, generator=gen)
        users = [
            None if c else pool.pairs.at[r, "user_id"] for r, c in zip(rows, cold, strict=True)
        ]
        items = [pool.pairs.at[r, "item_id"] for r in rows]
        return {"items": items, "users": users, "k": k, "noise": noise}

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``step``: ``-reward + drift``, and what to log."""
        cfg = self.config
        d = self.draw(step)
        tokens, emb = self.tokens(d["items"], d["users"])
        without = None
        if cfg.user_guidance != 1:
            without, _ = self.tokens(d["items"], [None] * len(d["items"]))
        images, used = self.sample(d["items"], tokens, d["noise"], d["k"], without)
        titles = [self.pool.titles[i] for i in d["items"]]
        reward, info = self.rewards(images, titles, emb, user_ids=d["users"])
        logs = {f"reward/{k}": float(v.float().mean()) for k, v in info.items()}
        logs.update(k=d["k"], grad_steps=len(used), cold=sum(u is None for u in d["users"]))
        loss = -reward.mean() + self.drift(tokens, d["items"], d["users"], step, logs)
        logs["loss"] = float(loss.detach())
        return loss, logs

    def train(self) -> list[float]:
        """Run until ``max_steps`` (or the tripwire); checkpoint every ``checkpoint_every``
        steps."""
        cfg = self.config
        self.rewards.train()  # running reward statistics update during training only
        params = self.trainable_parameters()
        main = self.accelerator.is_main_process
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="reward", disable=None or not main)
        if self.step == 0:
            if main:
                self.run_callbacks(0)
            self.guards.check()  # the tripwire's first point: stage A
        while self.step < cfg.max_steps and not self.guards.stopped:
            loss, logs = self.compute_loss(self.step)
            logs["grad_norm"] = self.optimizer_step(loss, params)
            self.history.append(logs["reward/reward"])
            bar.update(1)
            if main and self.step % cfg.log_every == 0:
                append_curve(cfg.out / CURVES_FILE, {"step": self.step, **logs})
                bar.set_postfix(reward=f"{logs['reward/reward']:.3f}")
            if main and self.step % cfg.probe_every == 0:
                self.run_callbacks(self.step)
            stop = self.guards.check()
            if stop or self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        self.rewards.eval()
        self.guards.finish()  # the model now holds the weights the run saves
        return self.history
