"""Stage B by DiffusionNFT: reinforcement on the forward process, positive and negative branches.

DiffusionNFT (Zheng et al. 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward
Process") learns from every draw of a round, good and bad, with a supervised denoising loss
only: no likelihoods, no sampling trajectories, any sampler. Each round:

1. **Rollouts** as the ranked trainer draws them (`RankedTrainer.rollout`: ``candidates`` draws
   per (user, item) pair, with the configured sampler, CFG and user guidance), made by the *old*
   policy and scored by the `MultiReward`. All draws are kept.
2. **Optimality probability.** Each draw's reward is standardised within its pair (the group
   advantage ``A``) and mapped to ``r = 1/2 + 1/2 clip(A / nft_advantage_clip, -1, 1)`` in
   [0, 1] (`optimality_probability`). A draw below the relevance floor gets ``r = 0``: the hard
   constraint makes it a negative.
3. **Forward-process training.** A draw's final latent ``x0`` is noised to ``x_t`` at a uniform
   ``t``; the old policy (no gradient) and the current one predict, and the implicit positive and
   negative policies ``v+ = (1 - β) v_old + β v_θ``, ``v- = (1 + β) v_old - β v_θ`` regress
   the forward process's target, weighted by ``r`` and ``1 - r`` (`nft_loss`).

**ε for v.** The paper writes the loss for a flow model's velocity. Our UNets predict ε (or v,
`icg.training.common.diffusion_target`); at a fixed ``(x_t, t)`` the ε-, x0- and velocity
predictions are affine functions of each other, and both implicit policies are affine
combinations (weights ``(1 - β) + β = (1 + β) - β = 1``), so mixing ε predictions gives exactly
the ε of the mixed velocities, and each squared error differs from the velocity one by a factor
that depends on ``t`` alone. The loss is therefore the paper's with another weighting over ``t``.

**CFG-free.** The loss is on the conditional prediction (with the user's tokens), never on a
guided one: the model learns the improved policy itself, and guidance stays a sampling choice
(``guidance_scale: 1`` samples the rollouts and the evaluation without it).

**Old policy.** ``nft_old_decay = 0``: the weights at the round's start (on-policy rounds).
Otherwise the paper's soft update ``θ_old ← η θ_old + (1 - η) θ`` at each round's end, and the
rollouts are drawn by that old policy. The old and stage-A predictions run the same modules with
other parameter values through `torch.func.functional_call` (`PolicyView`).

**Anchors to stage A.** The drift of `StageBTrainer.drift` (token distance; optionally the
stage-A denoising loss on clicked covers), and optionally ``nft_kl_weight · ||v_θ - v_A||²``,
the paper's KL-like term against the reference model.

Every draw of a round comes from ``(seed, round)`` and of a step from ``(seed, step)``;
checkpoints are at round ends and hold the old policy when it is soft-updated, so ``--resume``
is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from icg.artifacts import ArtifactError
from icg.checkpoints import latest_checkpoint, load_tensors, read_trainer_state
from icg.models.attention import ICG_TOKENS_KWARG
from icg.training.common import diffusion_target
from icg.training.ranked import RankedTrainer, group_advantages

logger = logging.getLogger(__name__)

OLD_POLICY_TENSORS = "nft_old"  # ``<checkpoint>/nft_old.safetensors``: the soft-updated policy


def optimality_probability(
    scores: torch.Tensor, eligible: torch.Tensor, clip: float = 5.0
) -> torch.Tensor:
    """DiffusionNFT's optimality probability ``r (P, K)`` in [0, 1] of each pair's draws.

    ``r = 1/2 + 1/2 clip(A / clip, -1, 1)`` with ``A`` the reward standardised within the pair
    (group advantages, `group_advantages`); the paper's normaliser ``Z`` is ``clip`` standard
    deviations (the official code's ``adv_clip_max``). Draws that fail the hard constraints
    (``eligible`` False) get ``r = 0``: they are negatives whatever their reward.

    Args:
        scores: combined rewards ``(P, K)``, one row per pair.
        eligible: ``(P, K)`` bool.
        clip: advantages beyond ``±clip`` saturate at ``r = 1`` (``0``).
    """
    r = 0.5 + 0.5 * (group_advantages(scores) / clip).clamp(-1.0, 1.0)
    return r * eligible


def nft_loss(
    pred: torch.Tensor,
    old: torch.Tensor,
    target: torch.Tensor,
    r: torch.Tensor,
    beta: float = 1.0,
    adaptive: bool = True,
) -> torch.Tensor:
    """The DiffusionNFT loss (Zheng et al. 2025, the negative-aware objective) of one batch.

    ``(1/β) mean_b [ r ||v+ - target||² + (1 - r) ||v- - target||² ]`` with the implicit
    policies ``v+ = (1 - β) old + β pred`` and ``v- = (1 + β) old - β pred``. The ``1/β`` (as the
    official code) makes the gradient at ``pred = old`` independent of β:
    ``d/d pred = 2 (2r - 1) (old - target) / (B · D)`` (``D`` elements per sample): a draw with
    ``r > 1/2`` is learned like a clicked cover, one with ``r < 1/2`` unlearned, ``r = 1/2``
    teaches nothing. Away from ``old``, β is the stiffness that holds ``pred`` near ``old``.

    Args:
        pred: the current policy's conditional prediction ``(B, C, h, w)`` (with gradient).
        old: the old policy's prediction ``(B, C, h, w)`` (detached here).
        target: the forward process's regression target ``(B, C, h, w)`` (ε or v).
        r: optimality probabilities ``(B,)`` in [0, 1].
        beta: the implicit policies' step β > 0.
        adaptive: divide each sample's squared error by its (detached) mean absolute error, as
            the official code's adaptive weighting (here in the prediction's own space), so that
            no timestep's scale dominates the batch.
    """
    old = old.detach().float()
    pred, target = pred.float(), target.float()
    positive = (1 - beta) * old + beta * pred  # (B, C, h, w)
    negative = (1 + beta) * old - beta * pred  # (B, C, h, w)

    def branch(v: torch.Tensor) -> torch.Tensor:
        err = (v - target).flatten(1)  # (B, D)
        sq = err.pow(2).mean(1)  # (B,)
        if adaptive:
            sq = sq / err.detach().abs().mean(1).clamp_min(1e-5)
        return sq

    r = r.to(pred)
    return ((r * branch(positive) + (1 - r) * branch(negative)) / beta).mean()


class PolicyView(nn.Module):
    """The trained ICG model and the denoiser as one module (``icg.…``, ``unet.…``: the names
    of `StageBGuards.named`), so that `torch.func.functional_call` can run any of the trainer's
    code with other values of the trainable parameters: ``functional_call(view, params, (fn,
    *args))`` calls ``fn(*args)`` with ``params`` in place. Nothing is copied; the adapter's
    processors read the swapped weights because they live in the adapter's modules."""

    def __init__(self, icg: nn.Module, unet: nn.Module) -> None:
        super().__init__()
        self.icg, self.unet = icg, unet

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``."""
        return fn(*args)


@dataclass
class NFTRound:
    """What one round trains on: every draw, with its optimality probability."""

    latents: torch.Tensor  # (N, C, h, w) final latents
    items: list[str]
    users: list[str | None]
    r: torch.Tensor  # (N,) in [0, 1]


class NFTTrainer(RankedTrainer):
    """Stage B, DiffusionNFT: `RankedTrainer`'s rounds (rollouts, checkpoints at round ends)
    with every draw kept and the negative-aware forward-process loss."""

    def setup(self, resume: bool = False) -> None:
        """`RankedTrainer.setup`, then the stage-A and old policies (restored on resume)."""
        super().setup(resume=resume)
        self.view = PolicyView(self.icg, self.unet)
        named = self.guards.named
        self.stage_a = {f"icg.{k}": v for k, v in self.reference.items()}
        # stage A had no UNet LoRA: a zero B makes the LoRA the identity
        self.stage_a |= {n: torch.zeros_like(p) for n, p in named.items() if "lora_B" in n}
        self.old = self.current_parameters()
        self._old_round = 0
        ckpt = latest_checkpoint(self.checkpoint_dir) if resume else None
        if ckpt is not None and self.config.nft_old_decay > 0:
            state = read_trainer_state(ckpt)
            if not isinstance(state.get("nft_old_round"), int):
                raise ArtifactError(f"{ckpt}: holds no 'nft_old_round' (the soft-updated policy)")
            expected = {n: p.shape for n, p in named.items()}
            old = load_tensors(ckpt, OLD_POLICY_TENSORS, expected)
            device = self.accelerator.device
            self.old = {n: old[n].to(device, p.dtype) for n, p in named.items()}
            self._old_round = state["nft_old_round"]

    def current_parameters(self) -> dict[str, torch.Tensor]:
        """A detached copy of the trainable parameters, by `PolicyView` name."""
        return {n: p.detach().clone() for n, p in self.guards.named.items()}

    def checkpoint_parts(self) -> tuple[dict, dict]:
        """The guards' parts, and the old policy when it is soft-updated (it is the round's
        starting weights otherwise, which the checkpoint holds already)."""
        state, tensors = super().checkpoint_parts()
        if self.config.nft_old_decay > 0:
            state = state | {"nft_old_round": self._old_round}
            old = {n: v.cpu() for n, v in self.old.items()}
            tensors = tensors | {OLD_POLICY_TENSORS: old}
        return state, tensors

    @torch.no_grad()
    def update_old_policy(self, round_index: int) -> None:
        """The old policy of ``round_index``: the current weights (``nft_old_decay = 0``), or the
        paper's soft update ``θ_old ← η θ_old + (1 - η) θ`` once per new round."""
        eta = self.config.nft_old_decay
        if eta == 0:
            self.old = self.current_parameters()
        elif round_index > self._old_round:
            for n, p in self.guards.named.items():
                self.old[n].mul_(eta).add_(p.detach(), alpha=1 - eta)
            self._old_round = round_index

    def collect(self, round_index: int) -> tuple[NFTRound, dict[str, float]]:
        """Every draw of one round with its optimality probability (``(seed, round)``)."""
        cfg = self.config
        self.update_old_policy(round_index)
        if cfg.nft_old_decay == 0:  # the old policy is the current one
            draws = self.rollout(round_index)
        else:
            draws = functional_call(self.view, self.old, (self.rollout, round_index))
        r = optimality_probability(draws.scores, draws.eligible, cfg.nft_advantage_clip)
        logs = draws.logs()
        logs["round/r"] = float(r.mean())
        logs["round/positive"] = float((r > 0.5).float().mean())
        return NFTRound(draws.latents, draws.items, draws.users, r.flatten()), logs

    def predict(
        self,
        items: Sequence[str],
        users: Sequence[str | None],
        noisy: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional prediction ``(B, C, h, w)`` at ``(noisy, t)`` (no CFG) and the ICG
        tokens ``(B, K', T)`` it used."""
        tokens, _ = self.tokens(items, users)
        kwargs = {ICG_TOKENS_KWARG: tokens}
        return self.unet(noisy, t, text, cross_attention_kwargs=kwargs).sample, tokens

    def predict_with(
        self, params: Mapping[str, torch.Tensor], *args: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict` with ``params`` (`PolicyView` names) in place of the current weights."""
        return functional_call(self.view, dict(params), (self.predict, *args))

    def step_loss(self, buffer: NFTRound, step: int) -> tuple[torch.Tensor, dict]:
        """The NFT loss of ``step`` on ``batch_size`` distinct draws of the round (+ anchors)."""
        cfg, sched = self.config, self.train_scheduler
        gen = self.generator(step, salt=3)
        idx = torch.randperm(len(buffer.items), generator=gen)[: cfg.batch_size]
        items = [buffer.items[i] for i in idx]
        users = [buffer.users[i] for i in idx]
        device = self.accelerator.device
        latents = buffer.latents[idx].to(device)  # (B, C, h, w) the draws' x0
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        t = t.to(device)
        noisy = sched.add_noise(latents, noise, t)  # (B, C, h, w) x_t of the forward process
        target = diffusion_target(sched, latents, noise, t)
        text = self.pool.text_states(items)  # (B, L, C_text)
        args = (items, users, noisy, t, text)
        with torch.no_grad():
            old, _ = self.predict_with(self.old, *args)
        pred, tokens = self.predict(*args)
        r = buffer.r[idx].to(device)
        loss = nft_loss(pred, old, target, r, cfg.nft_beta, cfg.nft_adaptive_weight)
        logs = {
            "loss/nft": float(loss.detach()),
            "nft/old_deviation": float((pred.detach() - old).pow(2).mean()),
            "nft/r": float(r.mean()),
        }
        if cfg.nft_kl_weight > 0:
            with torch.no_grad():
                ref, _ = self.predict_with(self.stage_a, *args)
            kl = (pred.float() - ref.float()).pow(2).mean()
            loss = loss + cfg.nft_kl_weight * kl
            logs["nft/kl"] = float(kl.detach())
        loss = loss + self.drift(tokens, items, users, step, logs)
        logs["loss"] = float(loss.detach())
        return loss, logs
