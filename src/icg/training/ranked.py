"""Stage B by reward-ranked training: the generator learns from its own best draws.

Each round draws ``pairs_per_round`` (user, item) pairs from the logs (some users dropped to cold
start), samples ``candidates`` covers per pair with the current model exactly as inference does
(CFG, user guidance), and scores them with the `MultiReward`. Scores are standardised within each
pair, so the user-dependent part of the reward is not drowned by how easy an item is (group
advantages, GRPO, Shao et al. 2024, Sec. 4.1.2). Draws whose relevance falls below a floor set by
the item's own reference cover are not eligible: relevance is a hard constraint, not a term that
the other rewards can buy off. The denoiser is then trained for ``steps_per_round`` steps on the
eligible draws, conditioned on the pair that drew them:

- ``selection="best"``: each pair's best eligible draw (RAFT, Dong et al. 2023, Alg. 1);
- ``selection="advantage"``: every eligible draw weighted by its clipped positive advantage
  (advantage-weighted regression, Peng et al. 2019, Eq. 11; reward-weighted diffusion training as
  in DiffusionNFT's positive branch);
- ``selection="first"``: each pair's first eligible draw, whatever its reward: the control that
  separates what selection teaches from what training on the generator's own draws does.

The draws were made with classifier-free guidance, so the loss is on the guided prediction
(`icg.training.common.denoising_loss`): the conditional branch learns what makes guided sampling
reproduce the selected draws, rather than the guided output itself (which guidance at inference
would then amplify a second time). The anchor against collapse is the stage-B drift of `StageBTrainer.drift` (token drift from stage
A, optionally the stage-A denoising loss on real clicked covers). Everything a round draws derives
from ``(seed, round)`` and checkpoints are taken at round ends, so ``--resume`` is exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image
from tqdm.auto import tqdm

from icg.layout import CURVES_FILE
from icg.training.common import (
    denoising_loss,
)
from icg.training.curves import append_curve
from icg.training.sampling import decode
from icg.training.stage_b import StageBTrainer

logger = logging.getLogger(__name__)


def group_advantages(scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scores ``(P, K)`` standardised within each row (one row = one pair's K draws).

    Group-relative advantages (GRPO, Shao et al. 2024, Sec. 4.1.2): ``(s - mean_k) / std_k``.
    """
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, unbiased=False, keepdim=True)
    return (scores - mean) / (std + eps)


def selection_weights(
    scores: torch.Tensor,
    eligible: torch.Tensor,
    selection: str = "best",
    clip: float = 2.0,
) -> torch.Tensor:
    """Training weights ``(P, K)`` of each pair's draws.

    Args:
        scores: combined rewards ``(P, K)``.
        eligible: ``(P, K)`` bool, draws that meet the hard constraints.
        selection: ``"best"``: weight 1 on the best eligible draw of each pair (RAFT, Dong et al.
            2023, Alg. 1); ``"advantage"``: ``clip(advantage, 0, clip)`` on eligible draws
            (advantage-weighted regression, Peng et al. 2019, Eq. 11); ``"first"``: weight 1 on
            the first eligible draw, whatever its reward (the control without selection: what
            training on the generator's own draws does by itself).
        clip: the advantage cap.

    A pair without an eligible draw gets all-zero weights: it teaches nothing this round.
    """
    if selection in ("best", "first"):
        # the best eligible draw, or the first eligible one (argmax returns the first maximum)
        ranked = (scores.masked_fill(~eligible, float("-inf")) if selection == "best"
                  else eligible.float())  # fmt: skip
        pick = ranked.argmax(dim=1, keepdim=True)  # (P, 1)
        weights = torch.zeros_like(scores).scatter_(1, pick, 1.0)
        return weights * eligible.any(dim=1, keepdim=True)
    if selection == "advantage":
        return group_advantages(scores).clamp(0.0, clip) * eligible
    raise ValueError(f"selection: expected 'best', 'advantage' or 'first', got {selection!r}")


def pil_to_tensor(images: list, size: int) -> torch.Tensor:
    """PIL images → float ``(N, 3, size, size)`` in [0, 1] (bicubic resize), as generated covers."""

    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
        for im in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


@dataclass
class RoundBuffer:
    """What one round trains on: the weighted draws and the pairs that drew them."""

    latents: torch.Tensor  # (N, C, h, w) final latents of the draws
    items: list[str]
    users: list[str | None]
    weights: torch.Tensor  # (N,) > 0


@dataclass
class Rollout:
    """Every draw of one round, pair-major: ``P`` pairs × ``K`` candidates, ``N = P * K``."""

    latents: torch.Tensor  # (N, C, h, w) final latents
    items: list[str]  # (N,)
    users: list[str | None]  # (N,)
    scores: torch.Tensor  # (P, K) combined rewards
    eligible: torch.Tensor  # (P, K) bool: meets the hard constraints (the relevance floor)
    info: dict[str, torch.Tensor]  # each reward's values (N,)

    def logs(self) -> dict[str, float]:
        """The round's curve entries: each reward's mean and the eligible fraction."""
        logs = {f"round/{key}": float(v.mean()) for key, v in self.info.items()}
        logs["round/eligible"] = float(self.eligible.float().mean())
        return logs


class RankedTrainer(StageBTrainer):
    """Stage B, reward-ranked: ``setup()`` and ``save`` as `StageBTrainer`; ``train()`` alternates
    collecting a round of scored draws and denoising steps on the selected ones."""

    def setup(self, resume: bool = False) -> None:

        super().setup(resume=resume)
        if self.train_scheduler is None:
            self.train_scheduler = DDPMScheduler.from_config(self._base.scheduler.config)
        self._reference_relevance: dict[str, float] = {}

    # -- one round -------------------------------------------------------------------------
    def reference_relevance(self, items: list[str]) -> torch.Tensor:
        """The relevance reward of each item's reference cover ``(N,)`` (computed once)."""
        todo = [i for i in dict.fromkeys(items) if i not in self._reference_relevance]
        if todo:
            relevance = self.rewards.rewards["relevance"]
            images = pil_to_tensor([self.pool.item_images[i] for i in todo], self.pool.size)
            raw, _ = relevance(
                images.to(self.accelerator.device), [self.pool.titles[i] for i in todo]
            )
            self._reference_relevance.update(zip(todo, raw.tolist(), strict=True))
        return torch.tensor([self._reference_relevance[i] for i in items])

    def eligible(
        self, pair_items: list[str], relevance: torch.Tensor | None, k: int
    ) -> torch.Tensor:
        """``(P, K)`` bool: the draws whose relevance ``(P*K,)`` (pair-major) meets the floor
        set by their item's reference cover (all, when the floor is off or relevance unscored)."""
        eligible = torch.ones(len(pair_items), k, dtype=torch.bool)
        if self.config.relevance_floor is not None and relevance is not None:
            reference = self.reference_relevance(pair_items)  # (P,)
            floor = reference - (1 - self.config.relevance_floor) * reference.abs()
            eligible = relevance.view(len(pair_items), k) >= floor[:, None]
        return eligible

    def draw_pairs(self, gen: torch.Generator) -> tuple[list[str], list[str | None]]:
        """``pairs_per_round`` (item, user) pairs of the pool drawn with ``gen``, some users
        dropped to cold start (``None``) at ``cold_start_fraction``."""
        cfg = self.config
        rows = torch.randint(len(self.pool.pairs), (cfg.pairs_per_round,), generator=gen).tolist()
        cold = (torch.rand(cfg.pairs_per_round, generator=gen) < cfg.cold_start_fraction).tolist()
        items = [self.pool.pairs.at[r, "item_id"] for r in rows]
        users = [
            None if c else self.pool.pairs.at[r, "user_id"] for r, c in zip(rows, cold, strict=True)
        ]
        return items, users

    def round_draws(
        self, gen: torch.Generator
    ) -> tuple[list[str], list[str | None], list[str], list[str | None]]:
        """`draw_pairs`, and the items and users of their ``candidates`` draws each (pair-major)."""
        pair_items, pair_users = self.draw_pairs(gen)
        k = self.config.candidates
        items = [i for i in pair_items for _ in range(k)]  # (P*K,)
        users = [u for u in pair_users for _ in range(k)]
        return pair_items, pair_users, items, users

    @torch.no_grad()
    def rollout(self, round_index: int) -> Rollout:
        """Sample and score every draw of one round (a function of ``(seed, round)``)."""
        cfg = self.config
        gen = self.generator(round_index, salt=2)
        n_pairs, k = cfg.pairs_per_round, cfg.candidates
        pair_items, pair_users, items, users = self.round_draws(gen)
        h = self.pool.size // self.pool.vae_scale
        noise = torch.randn(n_pairs * k, self.unet.config.in_channels, h, h, generator=gen)
        latents, scores, infos = [], [], []
        for start in range(0, len(items), cfg.generation_batch):
            part = slice(start, start + cfg.generation_batch)
            tokens, emb = self.tokens(items[part], users[part])
            without = None
            if cfg.user_guidance != 1 and any(u is not None for u in users[part]):
                without, _ = self.tokens(items[part], [None] * len(items[part]))
            z, _ = self.sample_latents(items[part], tokens, noise[part], 0, without)
            images = self.decode(z)
            titles = [self.pool.titles[i] for i in items[part]]
            reward, info = self.rewards(images, titles, emb, user_ids=users[part])
            latents.append(z.cpu())
            scores.append(reward.float().cpu())
            infos.append({key: v.float().cpu() for key, v in info.items()})
        scores = torch.cat(scores).view(n_pairs, k)
        info = {key: torch.cat([i[key] for i in infos]) for key in infos[0]}
        eligible = self.eligible(pair_items, info.get("relevance"), k)
        return Rollout(torch.cat(latents), items, users, scores, eligible, info)

    def collect(self, round_index: int) -> tuple[RoundBuffer, dict[str, float]]:
        """Sample, score and select the draws of one round (a function of ``(seed, round)``)."""
        cfg = self.config
        draws = self.rollout(round_index)
        scores, eligible = draws.scores, draws.eligible
        weights = selection_weights(scores, eligible, cfg.selection, cfg.advantage_clip).flatten()
        keep = weights > 0
        idx = keep.nonzero().flatten().tolist()
        buffer = RoundBuffer(
            draws.latents[keep], [draws.items[i] for i in idx], [draws.users[i] for i in idx],
            weights[keep],
        )  # fmt: skip
        logs = draws.logs()
        logs["round/selected_reward"] = float((scores.flatten() * weights).sum() / weights.sum())
        logs["round/pairs_used"] = float(eligible.any(dim=1).float().mean())
        return buffer, logs

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Covers ``(B, 3, H, W)`` in [0, 1] from final latents (no gradient: no checkpointing)."""
        return decode(self.vae, latents, checkpointing=False)

    def ranked_loss(self, buffer: RoundBuffer, step: int) -> tuple[torch.Tensor, dict]:
        """Weighted denoising loss of ``step`` on the round's draws (+ the drift anchor).

        Draws are sampled in proportion to their weights (an unbiased estimate of the weighted
        loss with a uniform mean over the batch)."""
        cfg = self.config
        gen = self.generator(step, salt=3)
        idx = torch.multinomial(buffer.weights, cfg.batch_size, replacement=True, generator=gen)
        items = [buffer.items[i] for i in idx]
        users = [buffer.users[i] for i in idx]
        device = self.accelerator.device
        latents = buffer.latents[idx].to(device)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        t = torch.randint(
            0, self.train_scheduler.config.num_train_timesteps, (len(idx),), generator=gen
        ).to(device)
        tokens, _ = self.tokens(items, users)
        text = self.pool.text_states(items)  # (B, L, C_text)
        uncond = self.pool.text[""].expand_as(text) if cfg.guidance_scale > 1 else None
        loss = denoising_loss(
            self.unet, self.train_scheduler, latents, noise, t, text, tokens,
            guidance_scale=cfg.guidance_scale, uncond_states=uncond,
        )  # fmt: skip
        logs = {"loss/denoise": float(loss.detach())}
        loss = loss + self.drift(tokens, items, users, step, logs)
        logs["loss"] = float(loss.detach())
        return loss, logs

    def step_loss(self, buffer: RoundBuffer, step: int) -> tuple[torch.Tensor, dict]:
        """The loss of ``step`` on the round's buffer (here `ranked_loss`; a subclass's own)."""
        return self.ranked_loss(buffer, step)

    # -- train -----------------------------------------------------------------------------
    def train(self) -> list[float]:
        """Rounds until ``max_steps``; a checkpoint at every round end that crosses a multiple
        of ``checkpoint_every`` (and at the end)."""

        cfg = self.config
        params = self.trainable_parameters()
        main = self.accelerator.is_main_process
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="reward", disable=None or not main)
        if self.step == 0:
            if main:
                self.run_callbacks(0)
            self.guards.check()  # the tripwire's first point: stage A
        while self.step < cfg.max_steps and not self.guards.stopped:
            round_index = self.step // cfg.steps_per_round
            self.rewards.train()  # the running statistics follow the draws
            buffer, round_logs = self.collect(round_index)
            self.rewards.eval()
            self.history.append(round_logs["round/reward"])
            if main:
                append_curve(self.config.out / CURVES_FILE, {"step": self.step, **round_logs})
            before = self.step
            end = min(cfg.max_steps, (round_index + 1) * cfg.steps_per_round)
            stop = False
            while self.step < end and len(buffer.items) and not stop:
                loss, logs = self.step_loss(buffer, self.step)
                logs["grad_norm"] = self.optimizer_step(loss, params)
                bar.update(1)
                if main and self.step % cfg.log_every == 0:
                    append_curve(self.config.out / CURVES_FILE, {"step": self.step, **logs})
                    bar.set_postfix(loss=f"{logs['loss']:.4f}")
                if main and self.step % cfg.probe_every == 0:
                    self.run_callbacks(self.step)
                stop = self.guards.check()
            if not buffer.items:  # no pair had an eligible draw: the round's steps are skipped
                bar.update(end - self.step)
                self.step = end
            crossed = self.step // cfg.checkpoint_every > before // cfg.checkpoint_every
            if stop or crossed or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        self.guards.finish()  # the model now holds the weights the run saves
        return self.history
