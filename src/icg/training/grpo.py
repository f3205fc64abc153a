"""Stage B by group-advantage policy gradient on stochastic DDIM sampling (``trainer: grpo``).

The sampling chain with DDIM's ``eta > 0`` is a policy whose every step is a Gaussian with a
known log-density (`icg.training.ddim_policy`), so the reward of a cover can be credited to the
steps that drew it: DDPO (Black et al. 2023) for diffusion models; Flow-GRPO (Liu et al. 2025)
and DanceGRPO (Xue et al. 2025) for flow models, with group-relative advantages and a KL to the
reference model. Each round:

1. draws ``pairs_per_round`` (user, item) pairs as the ranked trainer does (some users dropped to
   cold start) and samples ``candidates`` covers per pair with the current model exactly as
   inference samples (CFG, user guidance when configured), but with ``grpo_eta`` > 0, recording
   each step's ``x_t``, ``x_{t-1}``, ``t`` and the log-density of ``x_{t-1}``;
2. scores the covers with the `MultiReward` and standardises them within each pair (GRPO, Shao
   et al. 2024, Sec. 4.1.2), so the user-dependent part of the reward is not drowned by how easy
   an item is; a draw below the relevance floor of its item's reference cover (as the ranked
   trainer's) is never reinforced: its advantage is at most 0;
3. takes ``steps_per_round`` optimizer steps on minibatches of ``batch_size`` (trajectory, step)
   samples, ``grpo_timestep_fraction`` of each trajectory's steps, in an order drawn once per
   round: PPO's clipped ratio objective, plus ``grpo_kl_weight`` times the closed-form KL of the
   step's Gaussian to stage A's at the same ``x_t`` (stage A's tokens and adapter, no UNet LoRA),
   plus the drift anchor of `icg.training.stage_b.StageBTrainer.drift`.

Everything a round draws (pairs, the start noise, every step's noise, the training order) derives
from ``(seed, round)`` and checkpoints are taken at round ends (`RankedTrainer.train`, the loop
this trainer shares), so ``--resume`` is exact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call

from icg.training.ddim_policy import (
    clipped_policy_loss,
    ddim_step_stats,
    ddim_step_std,
    gaussian_log_prob,
    gaussian_step_kl,
)
from icg.training.ranked import RankedTrainer, group_advantages
from icg.training.sampling import guided_eps, start_step

logger = logging.getLogger(__name__)


def policy_advantages(scores: torch.Tensor, eligible: torch.Tensor, clip: float) -> torch.Tensor:
    """Per-trajectory advantages ``(P*K,)`` (pair-major) from the scores ``(P, K)``.

    Standardised within each pair (GRPO, Shao et al. 2024, Sec. 4.1.2), capped at 0 for draws
    that miss a hard constraint (``eligible`` False: never reinforced, still discouraged when
    below their pair's mean), then clipped to ``[-clip, clip]`` (DDPO's ``adv_clip_max``)."""
    advantages = group_advantages(scores)
    advantages = torch.where(eligible, advantages, advantages.clamp(max=0.0))
    return advantages.clamp(-clip, clip).flatten()


def training_order(
    n_trajectories: int,
    steps: Sequence[int],
    fraction: float,
    length: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The (trajectory, step) samples of a round's minibatches, in order ``(length, 2)``.

    Each trajectory trains ``ceil(fraction * len(steps))`` of its ``steps`` drawn without
    replacement (DDPO's ``timestep_fraction``, a subset per trajectory); the samples are shuffled
    and consumed in order, reshuffled for each further pass when ``length`` exceeds them."""
    per_trajectory = max(1, math.ceil(fraction * len(steps)))
    choice = torch.rand(n_trajectories, len(steps), generator=generator).argsort(dim=1)
    chosen = torch.as_tensor(list(steps))[choice[:, :per_trajectory]]  # (N, m)
    rows = torch.arange(n_trajectories).repeat_interleave(per_trajectory)
    samples = torch.stack([rows, chosen.flatten()], dim=1)  # (N*m, 2)
    passes = math.ceil(length / len(samples))
    order = [samples[torch.randperm(len(samples), generator=generator)] for _ in range(passes)]
    return torch.cat(order)[:length]


@dataclass
class Trajectories:
    """One round's rollouts, what its optimizer steps train on."""

    latents: torch.Tensor  # (N, S + 1, C, h, w): x_t before each step run, then the final latent
    log_probs: torch.Tensor  # (N, S) log-density of each step's x_{t-1} under the rollout policy
    timesteps: torch.Tensor  # (S,) the timestep of each step run
    advantages: torch.Tensor  # (N,)
    items: list[str]
    users: list[str | None]
    order: torch.Tensor  # (steps_per_round * batch_size, 2): (trajectory, step) per sample


class _Joint(torch.nn.Module):
    """The ICG model and the UNet as one module, so that `functional_call` can put stage A's
    parameters everywhere they act at once: the tokens, the adapter's keys and values inside the
    UNet's processors, and a UNet LoRA (at zero)."""

    def __init__(self, icg: torch.nn.Module, unet: torch.nn.Module, fn: Callable) -> None:
        super().__init__()
        self.icg, self.unet, self._fn = icg, unet, fn

    def forward(self) -> torch.Tensor:
        return self._fn()


class GRPOTrainer(RankedTrainer):
    """Stage B, group-advantage policy gradient: ``train()`` is `RankedTrainer`'s loop (a round
    of draws, then optimizer steps on them, checkpoints at round ends); ``collect`` records
    stochastic trajectories and ``ranked_loss`` is the clipped policy objective."""

    def setup(self, resume: bool = False) -> None:
        super().setup(resume=resume)
        # stage A as the KL's reference: its ICG parameters, and a UNet LoRA off (B = 0)
        lora = {id(p) for p in self.lora_parameters}
        self.reference_policy = {f"icg.{k}": v for k, v in self.reference.items()}
        self.reference_policy.update(
            {
                f"unet.{name}": torch.zeros_like(p)
                for name, p in self.unet.named_parameters()
                if id(p) in lora and "lora_B" in name
            }
        )

    # -- the policy ------------------------------------------------------------------------
    def policy_tokens(
        self, items: Sequence[str], users: Sequence[str | None]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """ICG tokens ``(B, K', T)``, the user embeddings, and the same items' tokens without a
        user when user guidance is on (else None)."""
        tokens, emb = self.tokens(items, users)
        without = None
        if self.config.user_guidance != 1:
            without, _ = self.tokens(items, [None] * len(items))
        return tokens, emb, without

    def step_mean(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        items: Sequence[str],
        tokens: torch.Tensor,
        without: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the sampler's next latent from ``x`` ``(B, C, h, w)`` at timestep
        ``t`` (scalar or ``(B,)``), guided as inference guides (DDIM's model input is unscaled)."""
        cfg = self.config
        text = self.pool.text_states(list(items))  # (B, L, C_text)
        uncond = self.pool.text[""].expand_as(text) if cfg.guidance_scale > 1 else None
        eps = guided_eps(
            self.unet, x.to(self.unet.dtype), t, text, tokens, cfg.guidance_scale, uncond,
            cfg.user_guidance if without is not None else 1.0, without,
        )  # fmt: skip
        return ddim_step_stats(self.scheduler, eps, t, x, cfg.grpo_eta)

    @torch.no_grad()
    def reference_mean(
        self, x: torch.Tensor, t: torch.Tensor, items: Sequence[str], users: Sequence[str | None]
    ) -> torch.Tensor:
        """`step_mean`'s mean under stage A (the KL's reference policy), no gradient."""

        def run() -> torch.Tensor:
            tokens, _, without = self.policy_tokens(items, users)
            return self.step_mean(x, t, items, tokens, without)[0]

        joint = _Joint(self.icg, self.unet, run)
        return functional_call(joint, self.reference_policy, (), strict=False)

    @torch.no_grad()
    def rollout(
        self,
        items: Sequence[str],
        tokens: torch.Tensor,
        without: torch.Tensor | None,
        noise: torch.Tensor,
        step_noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stochastic DDIM chains from ``noise`` ``(B, C, h, w)`` with the step noises
        ``(B, S, C, h, w)``: latents ``(B, S + 1, C, h, w)``, log-densities ``(B, S)`` (0 on a
        deterministic step) and the timesteps ``(S,)`` of the ``S`` steps run."""
        latents, start = self.start_latents(items, noise)
        latents = latents.float()
        timesteps = self.scheduler.timesteps[start:]
        path, log_probs = [latents], []
        for j, t in enumerate(timesteps):
            mean, std = self.step_mean(latents, t, items, tokens, without)
            latents = mean + std * step_noise[:, j].to(mean)
            if bool((std > 0).all()):
                log_probs.append(gaussian_log_prob(latents, mean, std))
            else:  # a deterministic step (no density): never trained
                log_probs.append(mean.new_zeros(len(mean)))
            path.append(latents)
        return torch.stack(path, dim=1), torch.stack(log_probs, dim=1), timesteps.cpu()

    # -- one round -------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, round_index: int) -> tuple[Trajectories, dict[str, float]]:
        """Sample, score and rank the trajectories of one round (a function of
        ``(seed, round)`` and the weights at the round's start)."""
        cfg = self.config
        gen = self.generator(round_index, salt=2)
        n_pairs, k = cfg.pairs_per_round, cfg.candidates
        pair_items, pair_users, items, users = self.round_draws(gen)
        h = self.pool.size // self.pool.vae_scale
        shape = (self.unet.config.in_channels, h, h)
        n_steps = cfg.num_inference_steps - start_step(cfg.num_inference_steps, cfg.strength)
        noise = torch.randn(len(items), *shape, generator=gen)
        step_noise = torch.randn(len(items), n_steps, *shape, generator=gen)  # (N, S, C, h, w)
        latents, log_probs, scores, infos = [], [], [], []
        for start in range(0, len(items), cfg.generation_batch):
            part = slice(start, start + cfg.generation_batch)
            tokens, emb, without = self.policy_tokens(items[part], users[part])
            path, lp, timesteps = self.rollout(
                items[part], tokens, without, noise[part], step_noise[part]
            )
            images = self.decode(path[:, -1].to(self.unet.dtype))
            titles = [self.pool.titles[i] for i in items[part]]
            reward, info = self.rewards(images, titles, emb, user_ids=users[part])
            latents.append(path.cpu())
            log_probs.append(lp.cpu())
            scores.append(reward.float().cpu())
            infos.append({key: v.float().cpu() for key, v in info.items()})
        scores = torch.cat(scores).view(n_pairs, k)
        info = {key: torch.cat([i[key] for i in infos]) for key in infos[0]}
        eligible = self.eligible(pair_items, info.get("relevance"), k)
        stochastic = ddim_step_std(self.scheduler, timesteps, cfg.grpo_eta) > 0  # (S,)
        order = training_order(
            len(items), stochastic.nonzero().flatten().tolist(), cfg.grpo_timestep_fraction,
            cfg.steps_per_round * cfg.batch_size, gen,
        )  # fmt: skip
        buffer = Trajectories(
            latents=torch.cat(latents), log_probs=torch.cat(log_probs), timesteps=timesteps,
            advantages=policy_advantages(scores, eligible, cfg.grpo_advantage_clip),
            items=items, users=users, order=order,
        )  # fmt: skip
        logs = {f"round/{key}": float(v.mean()) for key, v in info.items()}
        logs["round/eligible"] = float(eligible.float().mean())
        logs["round/best_reward"] = float(scores.max(dim=1).values.mean())
        logs["round/reward_std"] = float(scores.std(dim=1, unbiased=False).mean())
        return buffer, logs

    def ranked_loss(self, buffer: Trajectories, step: int) -> tuple[torch.Tensor, dict]:
        """The loss of ``step`` (the hook `RankedTrainer.train` calls): the clipped policy
        objective on its minibatch, + ``grpo_kl_weight`` x the KL to stage A, + the drift."""
        cfg = self.config
        local = step % cfg.steps_per_round
        rows = buffer.order[local * cfg.batch_size : (local + 1) * cfg.batch_size]
        traj, j = rows[:, 0], rows[:, 1]
        device = self.accelerator.device
        x = buffer.latents[traj, j].to(device)  # (B, C, h, w) x_t
        prev = buffer.latents[traj, j + 1].to(device)  # (B, C, h, w) the x_{t-1} drawn
        t = buffer.timesteps[j].to(device)  # (B,)
        items = [buffer.items[i] for i in traj]
        users = [buffer.users[i] for i in traj]
        tokens, _, without = self.policy_tokens(items, users)
        mean, std = self.step_mean(x, t, items, tokens, without)
        log_prob = gaussian_log_prob(prev, mean, std)
        old = buffer.log_probs[traj, j].to(device)
        advantages = buffer.advantages[traj].to(device)
        loss, info = clipped_policy_loss(log_prob, old, advantages, cfg.grpo_clip_range)
        logs = {"loss/policy": float(loss.detach()), **{f"policy/{k}": v for k, v in info.items()}}
        if cfg.grpo_kl_weight > 0:
            kl = gaussian_step_kl(mean, self.reference_mean(x, t, items, users), std).mean()
            loss = loss + cfg.grpo_kl_weight * kl
            logs["loss/kl"] = float(kl.detach())
        loss = loss + self.drift(tokens, items, users, step, logs)
        logs["loss"] = float(loss.detach())
        return loss, logs
