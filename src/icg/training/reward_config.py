"""Stage B's configuration, shared by every trainer (`icg.training.reward.TRAINERS`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from icg.config import DEFAULT_AESTHETIC, DEFAULT_CLIP, DEFAULT_GUIDANCE, DEFAULT_STEPS
from icg.training.sampling import start_step
from icg.training.tripwire import check_disjoint_halves

# relevance and preference weigh double: at equal weights aesthetic dominates and pulls covers
# away from their item (the demo's truth probe: fidelity falls)
DEFAULT_REWARDS = {"aesthetic": 1.0, "relevance": 2.0, "preference": 2.0}


class RewardConfig(BaseModel):
    """Stage-B configuration (validated before any model is loaded)."""

    model_config = ConfigDict(extra="forbid")

    data: Path
    init: Path
    out: Path
    preference: Path | None = None
    base: str | None = Field(
        None, description="default: the base model the stage-A adapter records"
    )
    mllm: str | None = Field(None, description="default: the MLLM the stage-A adapter records")
    rewards: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_REWARDS))
    clip: str = DEFAULT_CLIP
    aesthetic_predictor: str = DEFAULT_AESTHETIC
    relevance_scale: Literal["cosine", "clipscore"] = "cosine"
    trainer: Literal["ranked", "draft", "nft", "grpo"] = Field(
        "draft",
        description="ranked: train the denoiser on its own best draws (RAFT / advantage-weighted); "
        "draft: back-propagate the reward through the last sampling steps (DRaFT-K); "
        "nft: DiffusionNFT, positive and negative forward-process branches on every draw; "
        "grpo: policy gradient on stochastic DDIM draws with per-pair advantages (DDPO / GRPO)",
    )
    seed: int = 0
    max_steps: int = Field(60, ge=1)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    num_inference_steps: int = Field(DEFAULT_STEPS, ge=1)
    guidance_scale: float = Field(DEFAULT_GUIDANCE, ge=1.0, description="CFG in sampling (1 = off)")
    strength: float = Field(
        1.0,
        gt=0,
        le=1,
        description="1: from pure noise; < 1: start from the item's reference cover noised to "
        "this fraction of the schedule (reference-guided, as diffusers' img2img)",
    )
    user_guidance: float = Field(1.0, ge=0, description="user guidance w_u while sampling")
    # ranked trainer (and the rollouts of nft and grpo: candidates, pairs, steps per round, floor)
    candidates: int = Field(8, ge=2, description="ranked, nft, grpo: draws per (user, item) pair")
    pairs_per_round: int = Field(16, ge=1, description="ranked, nft, grpo: pairs drawn per round")
    steps_per_round: int = Field(
        8, ge=1, description="ranked, nft, grpo: optimizer steps per round"
    )
    selection: Literal["best", "advantage", "first"] = Field(
        "best",
        description="ranked: train on each pair's best draw (RAFT), weight draws by their "
        "clipped per-pair advantage, or (a control without selection) each pair's first draw",
    )
    advantage_clip: float = Field(2.0, gt=0)
    relevance_floor: float | None = Field(
        0.9,
        gt=0,
        description="ranked: a draw is eligible only if its relevance reward r satisfies "
        "r >= r_ref - (1 - floor) * |r_ref|, r_ref the item's reference cover's (a hard "
        "constraint; None: off)",
    )
    generation_batch: int = Field(64, ge=1)
    # nft trainer (icg.training.nft); defaults: the official DiffusionNFT code (NVlabs/DiffusionNFT,
    # config/nft.py) where it has one that fits a 60-step run
    nft_beta: float = Field(
        1.0,
        gt=0,
        description="nft: beta of the implicit policies v+ = (1-beta) v_old + beta v, "
        "v- = (1+beta) v_old - beta v; smaller lets the policy move further from the old one "
        "(the official default 1.0; its OCR and multi-reward configs use 0.1)",
    )
    nft_advantage_clip: float = Field(
        5.0,
        gt=0,
        description="nft: r = 1/2 + 1/2 clip(A / this, -1, 1), A the per-pair standardised "
        "reward (the official adv_clip_max, 5)",
    )
    nft_old_decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="nft: soft update of the old policy at each round end, old <- eta old + "
        "(1 - eta) current, and rollouts drawn by it; 0: the round's starting weights (the "
        "official schedule min(0.001 step, 0.5) stays under 0.06 over 60 steps)",
    )
    nft_kl_weight: float = Field(
        0.0,
        ge=0,
        description="nft: weight of ||v - v_stageA||^2 on the conditional prediction (one more "
        "UNet forward a step; the official SD3 value is 1e-4); 0: the drift is the only anchor",
    )
    nft_adaptive_weight: bool = Field(
        True,
        description="nft: divide each draw's squared error by its detached mean absolute error "
        "(the official adaptive weighting, taken in the prediction's own space)",
    )
    # grpo trainer (icg.training.grpo): defaults are DDPO's (Black et al. 2023, ddpo-pytorch
    # config/base.py) and Flow-GRPO's (Liu et al. 2025, config/grpo.py, SD3.5 GenEval/OCR)
    grpo_eta: float = Field(
        1.0,
        description="grpo: DDIM eta of the rollouts, 0 < eta <= 1 (1: DDPM's posterior variance, "
        "DDPO's setting; the policy needs eta > 0 to have a log-probability)",
    )
    grpo_clip_range: float = Field(
        1e-4, gt=0, description="grpo: PPO clip range of the per-step ratio (DDPO, Flow-GRPO)"
    )
    grpo_kl_weight: float = Field(
        0.04,
        ge=0,
        description="grpo: weight of the closed-form KL of each step's Gaussian to stage A's "
        "(Flow-GRPO's beta)",
    )
    grpo_timestep_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="grpo: fraction of each trajectory's stochastic steps trained, drawn per "
        "trajectory (DDPO's timestep_fraction)",
    )
    grpo_advantage_clip: float = Field(
        5.0, gt=0, description="grpo: advantages clipped to [-this, this] (Flow-GRPO)"
    )
    # draft trainer
    truncation_k: int = Field(1, ge=1, description="DRaFT-K: gradients through the last K steps")
    truncation_k_max: int | None = Field(
        10,
        ge=1,
        description="draw K uniformly in [truncation_k, this] once per trajectory (a random "
        "truncation, as ReFL; capped at the steps sampled); None: K = truncation_k (DRaFT-K)",
    )
    gradient_checkpointing: bool = True
    cold_start_fraction: float = Field(0.2, ge=0, le=1)
    drift_token_weight: float = Field(
        0.1, ge=0, description="penalty on ||tokens - stage-A tokens||²"
    )
    drift_denoise_weight: float = Field(0.0, ge=0, description="stage-A denoising loss weight")
    drift_denoise_batch: int = Field(2, ge=1)
    lora_rank: int = Field(0, ge=0, description="UNet LoRA rank (0: no LoRA)")
    resolution: int | None = Field(None, ge=8)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    probe_every: int = Field(25, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # off until the recipe matrix measures it (docs/recipes.md)
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="the saved adapter is the EMA of the trained weights, this its largest "
        "decay (warm-up (1 + t) / (10 + t): icg.training.ema); null: the raw weights",
    )
    # the reward-hacking tripwire (icg.training.tripwire)
    tripwire_preference: Path | None = Field(
        None,
        description="a preference model fitted on the other half of the click log than "
        "preference (log_half); it scores a fixed probe set every tripwire_every steps, and the "
        "run stops at its best when that score falls while the training one rises; None: off",
    )
    tripwire_every: int = Field(10, ge=1, description="steps between tripwire evaluations")
    tripwire_patience: int = Field(
        3, ge=1, description="evaluations in a row with held-out down and training up to stop"
    )
    tripwire_pairs: int = Field(16, ge=1, description="(user, item) pairs of the probe set")

    @field_validator("grpo_eta")
    @classmethod
    def _check_eta(cls, eta: float) -> float:
        if not 0 < eta <= 1:
            raise ValueError(
                f"expected 0 < grpo_eta <= 1, got {eta} (eta = 0 is deterministic DDIM: its steps "
                "have no log-probability for a policy gradient; eta > 1 has no DDIM step)"
            )
        return eta

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        if not self.data.is_dir():
            raise ValueError(f"data: expected an existing data folder, got {str(self.data)!r}")
        if not self.rewards:
            raise ValueError("rewards: expected at least one NAME=WEIGHT")
        if self.rewards.get("preference", 0.0) and self.preference is None:
            raise ValueError("preference: the preference reward needs --preference RUN/preference")
        if self.truncation_k > self.num_inference_steps:
            raise ValueError(
                f"truncation_k: expected <= num_inference_steps={self.num_inference_steps}, "
                f"got {self.truncation_k}"
            )
        run = start_step(self.num_inference_steps, self.strength)
        if self.truncation_k > self.num_inference_steps - run:
            raise ValueError(
                f"truncation_k: expected <= the {self.num_inference_steps - run} steps that "
                f"strength={self.strength} runs, got {self.truncation_k}"
            )
        if self.truncation_k_max is not None and self.truncation_k_max < self.truncation_k:
            raise ValueError(f"truncation_k_max: expected >= truncation_k={self.truncation_k}")
        n_draws = self.pairs_per_round * self.candidates
        if self.trainer == "nft" and self.batch_size > n_draws:
            raise ValueError(
                f"batch_size: nft trains on distinct draws of a round; expected <= "
                f"pairs_per_round * candidates = {n_draws}, got {self.batch_size}"
            )
        if self.tripwire_preference is not None:
            if self.preference is None:
                raise ValueError("tripwire_preference: needs preference (the training half)")
            check_disjoint_halves(self.preference, self.tripwire_preference)
        return self
