"""Stage B: multi-reward alignment by differentiable reward fine-tuning (ICG, EMNLP 2025, Sec. 3.4).

No labels: covers are sampled with the ICG pipeline for (user, item) pairs drawn from the logs
(some users dropped to cold start), scored by a `MultiReward` (aesthetic + relevance +
personalized preference), and the weighted reward is back-propagated through the last K
denoising steps (DRaFT-K, Clark et al. 2024, Sec. 3; K = 1 is close to ReFL, Xu et al. 2023,
Sec. 4.2) into the meta tokens, the refiner and the adapter (optionally a UNet LoRA). The
truncation point is drawn once per trajectory. A drift regulariser keeps the model near stage A:
a penalty on the distance to the stage-A model's ICG tokens and, optionally, the stage-A
denoising loss on clicked covers.

The recipe reads ``setup → train → save_checkpoint → cleanup``; every random draw of step ``s``
comes from ``(seed, process, s)``, so ``--resume`` continues exactly. Nothing here reads the
world's truth: monitoring callbacks are injected by the CLI.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from icg.checkpoints import (
    latest_checkpoint,
    load_optimizer_state,
    load_trainer_state,
    save_checkpoint,
    write_run_config,
)
from icg.config import DEFAULT_AESTHETIC, DEFAULT_CLIP
from icg.io import atomic_save_dir
from icg.models.attention import ICG_TOKENS_KWARG
from icg.rewards.factory import STATS_FILE, RewardSources, build_rewards
from icg.training.align import (
    NonFiniteLossError,
    diffusion_target,
    encode_images,
    encode_prompt,
    step_generator,
)
from icg.training.curves import CURVES_FILE, append_curve, truncate_curves

logger = logging.getLogger(__name__)

LORA_FILE = "unet_lora.safetensors"
DEFAULT_REWARDS = {"aesthetic": 1.0, "relevance": 1.0, "preference": 1.0}


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
    seed: int = 0
    max_steps: int = Field(200, ge=1)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    num_inference_steps: int = Field(10, ge=1)
    guidance_scale: float = Field(1.0, ge=1.0, description="CFG in sampling (1 = off)")
    strength: float = Field(
        1.0,
        gt=0,
        le=1,
        description="1: from pure noise; < 1: start from the item's reference cover noised to "
        "this fraction of the schedule (reference-guided, as diffusers' img2img)",
    )
    truncation_k: int = Field(1, ge=1, description="DRaFT-K: gradients through the last K steps")
    truncation_k_max: int | None = Field(
        None, ge=1, description="draw K uniformly in [truncation_k, this] once per trajectory"
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
        return self


# ---- small pure functions ----------------------------------------------------------------
def start_step(num_steps: int, strength: float) -> int:
    """First step run by reference-guided sampling, as diffusers' img2img pipelines count it."""
    return num_steps - min(int(num_steps * strength), num_steps)


def truncated_steps(num_steps: int, k: int) -> range:
    """Steps that carry gradients in DRaFT-K (Clark et al. 2024, Sec. 3): the last ``k``."""
    if not 1 <= k <= num_steps:
        raise ValueError(f"k: expected 1 <= k <= num_steps={num_steps}, got {k}")
    return range(num_steps - k, num_steps)


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


def token_drift(tokens: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between ICG tokens and the stage-A model's tokens (a trust region
    in token space, as the KL/L2 anchors of reward fine-tuning; Fan et al. 2023, Sec. 4)."""
    return (tokens - reference.detach()).pow(2).mean()


def sample_trajectory(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    scheduler,
    latents: torch.Tensor,
    text_states: torch.Tensor,
    tokens: torch.Tensor,
    grad_steps: Sequence[int] | range,
    guidance_scale: float = 1.0,
    uncond_states: torch.Tensor | None = None,
    checkpointing: bool = True,
    start: int = 0,
) -> tuple[torch.Tensor, list[int]]:
    """Sample covers, with autograd on only for the steps in ``grad_steps``.

    Args:
        unet, vae: the base models (the ICG adapter installed in the UNet).
        scheduler: its ``set_timesteps`` has been called.
        latents: initial noise ``(B, C, h, w)`` (already scaled by ``init_noise_sigma``).
        text_states: ``(B, L, C_text)`` title encodings.
        tokens: ICG tokens ``(B, K', T)`` (carry gradients).
        grad_steps: indices of the denoising steps that carry gradients.
        guidance_scale: CFG weight (> 1 needs ``uncond_states``; the uncond branch gets zero
            ICG tokens, as `icg.pipeline`).
        checkpointing: recompute the UNet/VAE activations in backward (memory for time).
        start: first step of the schedule (reference-guided sampling starts part way, from a
            noised reference latent); step indices count from the start of the full schedule.

    Returns:
        Images ``(B, 3, H, W)`` in [0, 1], and the steps whose UNet output required grad.
    """
    grad_steps = set(grad_steps)
    do_cfg = guidance_scale > 1.0
    if do_cfg and uncond_states is None:
        raise ValueError("uncond_states: required when guidance_scale > 1")
    used = []

    def unet_eps(
        x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, tok: torch.Tensor
    ) -> torch.Tensor:
        return unet(x, t, text, cross_attention_kwargs={ICG_TOKENS_KWARG: tok}).sample

    for i, t in enumerate(scheduler.timesteps[start:], start=start):
        with torch.set_grad_enabled(i in grad_steps and torch.is_grad_enabled()):
            x = scheduler.scale_model_input(latents, t)
            text, tok = text_states, tokens.to(unet.dtype)
            if do_cfg:
                x = torch.cat([x, x])
                text = torch.cat([uncond_states, text_states])
                tok = torch.cat([torch.zeros_like(tok), tok])
            if i in grad_steps and checkpointing and torch.is_grad_enabled():
                eps = grad_checkpoint(unet_eps, x, t, text, tok, use_reentrant=False)
            else:
                eps = unet_eps(x, t, text, tok)
            if do_cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            if eps.requires_grad:
                used.append(i)
            latents = scheduler.step(eps, t, latents).prev_sample
    z = latents / vae.config.scaling_factor

    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z).sample

    if latents.requires_grad and checkpointing:
        images = grad_checkpoint(decode, z, use_reentrant=False)
    else:
        images = decode(z)
    return (images / 2 + 0.5).clamp(0, 1), used  # (B, 3, H, W)


# ---- the recipe --------------------------------------------------------------------------
@dataclass
class RewardResult:
    """What a finished run returns."""

    rewards: list[float]  # combined (normalised, weighted) reward per step
    adapter_dir: Path
    steps: int


def save_unet_lora(unet: torch.nn.Module, path: Path) -> None:
    """Write the UNet's LoRA weights (peft state dict) to a safetensors file atomically."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(unet)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


class _RunState:
    """What one checkpoint holds beside the optimizer: the ICG model, reward stats, UNet LoRA."""

    def __init__(self, recipe: RewardRecipe) -> None:
        self.recipe = recipe

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.recipe.icg.save_pretrained(directory)
        self.recipe.rewards.save_stats(directory / STATS_FILE)
        if self.recipe.lora_parameters:
            save_unet_lora(self.recipe.unet, directory / LORA_FILE)


Callback = Callable[["RewardRecipe", int], dict | None]


class RewardRecipe:
    """Stage-B training: ``setup()``, ``train()``, ``save_checkpoint()``, ``cleanup()``.

    Args:
        config: the validated configuration.
        base: a loaded SD pipeline (default: from ``config.base`` or the adapter's record).
        mllm, processor: a loaded MLLM and processor (default: from the adapter's record).
        rewards: a `MultiReward` (default: built from ``config.rewards``).
        callbacks: called as ``callback(recipe, step)`` every ``probe_every`` steps on the main
            process (monitoring only: their results are logged, never used by the loss).
    """

    def __init__(
        self,
        config: RewardConfig,
        base=None,
        mllm=None,
        processor=None,
        rewards=None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config
        self._base, self._mllm, self._processor = base, mllm, processor
        self.rewards = rewards
        self.callbacks = list(callbacks)
        self.step = 0
        self.history: list[float] = []
        self.lora_parameters: list[torch.nn.Parameter] = []

    # -- setup ---------------------------------------------------------------------------
    def setup(self, resume: bool = False) -> None:
        """Load data and models, restore or load the stage-A model, build rewards and optimizer."""
        from accelerate import Accelerator
        from diffusers import DDIMScheduler, DiffusionPipeline

        from icg.data import load_dataset
        from icg.models.icg_model import ICGModel
        from icg.models.mllm import load_mllm
        from icg.models.paths import resolve_model_path

        cfg = self.config
        torch.manual_seed(cfg.seed)
        threads = torch.get_num_threads()
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
        torch.set_num_threads(threads)  # accelerate's MULTI_CPU setup resets it; keep the caller's
        device = self.accelerator.device
        init_dir = self.adapter_dir(cfg.init)
        record = ICGModel.read_config(init_dir)
        if self._base is None:
            name = cfg.base or record.get("base_model")
            if not name:
                raise ValueError(f"{init_dir}: records no base model; set base")
            self._base = DiffusionPipeline.from_pretrained(resolve_model_path(name))
        if self._mllm is None:
            name = cfg.mllm or record.get("mllm")
            if not name:
                raise ValueError(f"{init_dir}: records no MLLM; set mllm")
            self._mllm, self._processor = load_mllm(resolve_model_path(name))
        base = self._base
        if getattr(base, "text_encoder_2", None) is not None:
            raise ValueError("base: stage B supports SD1.x/2.x-style pipelines (one text encoder)")
        for module in (base.unet, base.vae, base.text_encoder, self._mllm):
            module.requires_grad_(False).eval().to(device)
        self.unet, self.vae = base.unet, base.vae
        self.scheduler = DDIMScheduler.from_config(base.scheduler.config)
        self.train_scheduler = None
        if cfg.drift_denoise_weight > 0:
            from diffusers import DDPMScheduler

            self.train_scheduler = DDPMScheduler.from_config(base.scheduler.config)

        stage_a = ICGModel.from_pretrained(init_dir, mllm=self._mllm, processor=self._processor)
        self.checkpoint_dir = cfg.out / "checkpoints"
        ckpt = latest_checkpoint(self.checkpoint_dir) if resume else None
        if resume and ckpt is None:
            logger.warning(
                "--resume: no checkpoint in %s; starting from stage A", self.checkpoint_dir
            )
        model = stage_a
        if ckpt is not None:
            model = ICGModel.from_pretrained(
                ckpt / "model", mllm=self._mllm, processor=self._processor
            )
        model.to(device)
        # the drift anchor: stage A's trainable parameters, used through functional_call
        names = {id(p): n for n, p in stage_a.named_parameters()}
        self.reference = {
            names[id(p)]: p.detach().clone().to(device)
            for p in stage_a.trainable_parameters()
            if id(p) in names
        }
        model.adapter.install(self.unet)
        self.model = model
        self._prepare_data(load_dataset(cfg.data))
        if cfg.lora_rank > 0:
            self._add_lora(ckpt)
        if self.rewards is None:
            self.rewards = self._build_rewards()
        self.rewards.to(device)
        self.rewards.gather = self.accelerator.gather
        params = self.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        if ckpt is not None:
            load_optimizer_state(ckpt, self.optimizer)
            state = load_trainer_state(ckpt)
            self.step, self.history = int(state["step"]), list(state["rewards"])
            self.rewards.load_stats(ckpt / "model" / STATS_FILE)
            logger.info("resumed from %s at step %d", ckpt, self.step)
        if self.accelerator.is_main_process:
            truncate_curves(self.config.out / CURVES_FILE, self.step)

    @staticmethod
    def adapter_dir(path: Path) -> Path:
        """``RUN/align`` or ``RUN/align/adapter`` → the folder holding ``icg_config.json``."""
        path = Path(path)
        return path / "adapter" if (path / "adapter" / "icg_config.json").is_file() else path

    @property
    def icg(self):
        return self.model

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Meta tokens (+ MLLM LoRA), refiner, adapter, and the UNet LoRA when enabled."""
        return self.icg.trainable_parameters() + self.lora_parameters

    def _add_lora(self, ckpt: Path | None) -> None:
        from peft import LoraConfig

        cfg = self.config
        self.unet.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_rank,
                init_lora_weights="gaussian",
                target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            )
        )
        self.lora_parameters = [p for n, p in self.unet.named_parameters() if "lora_" in n]
        if ckpt is not None and (ckpt / "model" / LORA_FILE).is_file():
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.unet, load_file(str(ckpt / "model" / LORA_FILE)))

    def _build_rewards(self):
        cfg = self.config
        sources = RewardSources(
            clip=cfg.clip, aesthetic_predictor=cfg.aesthetic_predictor,
            relevance_scale=cfg.relevance_scale, preference=cfg.preference,
        )  # fmt: skip
        return build_rewards(cfg.rewards, sources)

    @torch.no_grad()
    def _prepare_data(self, data) -> None:
        from icg.data.images import load_image
        from icg.training.align import clicked_examples

        cfg = self.config
        if data.impressions is None or data.users is None or data.items is None:
            raise ValueError(f"{cfg.data}: stage B needs items, users and impressions")
        imp = data.impressions
        self.pairs = (
            imp[["user_id", "item_id"]]
            .astype(str)
            .drop_duplicates()
            .sort_values(["user_id", "item_id"])
        )  # the (user, item) pool, in a fixed order
        self.pairs = self.pairs.reset_index(drop=True)
        items = data.items.set_index("item_id")
        self.titles = {str(i): str(items.at[i, "title"]) for i in items.index}
        self.item_images = {str(i): load_image(items.at[i, "image"]) for i in items.index}
        users = data.users.set_index("user_id")
        self.user_vectors = {
            str(u): torch.as_tensor(np.asarray(users.at[u, "embedding"], dtype=np.float32))
            for u in users.index
        }
        self.user_dim = data.embedding_dim
        self.size = cfg.resolution or self.unet.config.sample_size * self.vae_scale
        self._text: dict[str, torch.Tensor] = {}
        self._ref_latents: dict[str, torch.Tensor] = {}  # item -> reference latent (strength < 1)
        if cfg.strength < 1:
            ids = sorted(self.item_images)
            latents = encode_images(self.vae, [self.item_images[i] for i in ids], self.size)
            self._ref_latents = dict(zip(ids, latents, strict=True))
        titles = sorted(set(self.titles.values()))
        prompts = self.model.adapter.prompts(titles)  # the prompt format stage A trained with
        for title, prompt in zip(titles, prompts, strict=True):
            self._text[title] = encode_prompt(self._base.tokenizer, self._base.text_encoder, prompt)
        self._text[""] = encode_prompt(self._base.tokenizer, self._base.text_encoder, "")
        if cfg.drift_denoise_weight > 0:
            item_ids, user_ids, covers = clicked_examples(imp, data.items, data.users)
            if not item_ids:
                raise ValueError(f"{cfg.data}: drift_denoise_weight > 0 needs clicked impressions")
            self.clicks = (item_ids, user_ids)
            self.click_latents = encode_images(self.vae, covers, self.size)
        logger.info("stage B: %d (user, item) pairs, %d items", len(self.pairs), len(self.titles))

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -- one step --------------------------------------------------------------------------
    def _generator(self, step: int, salt: int = 0) -> torch.Generator:
        rank = self.accelerator.process_index
        return step_generator(self.config.seed + 7907 * rank + 104_729 * salt, step)

    def draw(self, step: int) -> dict[str, Any]:
        """The pairs, cold-start mask, K and initial noise of ``step`` (a function of the step)."""
        cfg = self.config
        gen = self._generator(step)
        rows = torch.randint(len(self.pairs), (cfg.batch_size,), generator=gen).tolist()
        cold = (torch.rand(cfg.batch_size, generator=gen) < cfg.cold_start_fraction).tolist()
        k = sample_truncation(cfg.num_inference_steps, cfg.truncation_k, cfg.truncation_k_max, gen)
        h = self.size // self.vae_scale
        noise = torch.randn(cfg.batch_size, self.unet.config.in_channels, h, h, generator=gen)
        users = [
            None if c else self.pairs.at[r, "user_id"] for r, c in zip(rows, cold, strict=True)
        ]
        items = [self.pairs.at[r, "item_id"] for r in rows]
        return {"items": items, "users": users, "k": k, "noise": noise}

    def tokens(
        self, items: Sequence[str], users: Sequence[str | None], params: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ICG tokens ``(B, K', T)`` for (item, user) pairs (one MLLM forward per distinct item),
        with ``params`` (e.g. the stage-A reference) in place of the current parameters."""
        from torch.func import functional_call

        device = self.accelerator.device
        unique = list(dict.fromkeys(items))
        args = ([self.titles[i] for i in unique], [self.item_images[i] for i in unique])
        enc = self.icg.encoder
        if params is None:
            feats = enc(*args)
        else:
            prefix = "encoder."
            sub = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            feats = functional_call(enc, sub, args, strict=False)
        feats = feats[
            torch.tensor([unique.index(i) for i in items], device=feats.device)
        ]  # (B, K, D)
        emb = None
        if self.icg.refiner is not None and self.user_dim > 0:
            nan = torch.full((self.user_dim,), float("nan"))
            emb = torch.stack([nan if u is None else self.user_vectors[u] for u in users]).to(
                device
            )
        if params is None:
            return self.model(feats, emb), emb
        rest = {k: v for k, v in params.items() if not k.startswith("encoder.")}
        return functional_call(self.icg, rest, (feats, emb), strict=False), emb

    def sample(self, items: Sequence[str], tokens: torch.Tensor, noise: torch.Tensor, k: int):
        """Covers ``(B, 3, H, W)`` with gradients through the last ``k`` steps (0: none)."""
        cfg = self.config
        device = self.accelerator.device
        self.scheduler.set_timesteps(cfg.num_inference_steps, device=device)
        noise = noise.to(device, self.unet.dtype)
        start = start_step(cfg.num_inference_steps, cfg.strength)
        if start == 0:
            latents = noise * self.scheduler.init_noise_sigma
        else:  # reference-guided: the item's own cover, noised to the first step that runs
            ref = torch.stack([self._ref_latents[i] for i in items]).to(noise)
            t0 = self.scheduler.timesteps[start : start + 1].repeat(len(items))
            latents = self.scheduler.add_noise(ref, noise, t0)
        text = torch.stack([self._text[self.titles[i]] for i in items])  # (B, L, C_text)
        uncond = self._text[""].expand_as(text) if cfg.guidance_scale > 1 else None
        steps = truncated_steps(cfg.num_inference_steps, k) if k > 0 else range(0)
        return sample_trajectory(
            self.unet, self.vae, self.scheduler, latents, text, tokens, steps,
            cfg.guidance_scale, uncond, cfg.gradient_checkpointing, start,
        )  # fmt: skip

    def _denoise_loss(self, step: int) -> torch.Tensor:
        cfg = self.config
        gen = self._generator(step, salt=1)
        item_ids, user_ids = self.clicks
        idx = torch.randint(len(item_ids), (cfg.drift_denoise_batch,), generator=gen)
        tokens, _ = self.tokens([item_ids[i] for i in idx], [user_ids[i] for i in idx])
        latents = self.click_latents[idx]
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        t = torch.randint(
            0, self.train_scheduler.config.num_train_timesteps, (len(idx),), generator=gen
        )
        t = t.to(latents.device)
        noisy = self.train_scheduler.add_noise(latents, noise, t)
        text = torch.stack([self._text[self.titles[item_ids[i]]] for i in idx])
        pred = self.unet(noisy, t, text, cross_attention_kwargs={ICG_TOKENS_KWARG: tokens}).sample
        return F.mse_loss(
            pred.float(), diffusion_target(self.train_scheduler, latents, noise, t).float()
        )

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``step``: ``-reward + drift``, and what to log."""
        cfg = self.config
        d = self.draw(step)
        tokens, emb = self.tokens(d["items"], d["users"])
        images, used = self.sample(d["items"], tokens, d["noise"], d["k"])
        titles = [self.titles[i] for i in d["items"]]
        reward, info = self.rewards(images, titles, emb, user_ids=d["users"])
        loss = -reward.mean()
        logs = {f"reward/{k}": float(v.float().mean()) for k, v in info.items()}
        logs.update(k=d["k"], grad_steps=len(used), cold=sum(u is None for u in d["users"]))
        if cfg.drift_token_weight > 0:
            with torch.no_grad():
                ref, _ = self.tokens(d["items"], d["users"], params=self.reference)
            drift = token_drift(tokens, ref)
            loss = loss + cfg.drift_token_weight * drift
            logs["drift/tokens"] = float(drift.detach())
        if cfg.drift_denoise_weight > 0:
            denoise = self._denoise_loss(step)
            loss = loss + cfg.drift_denoise_weight * denoise
            logs["drift/denoise"] = float(denoise.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs

    # -- train -----------------------------------------------------------------------------
    def train(self) -> list[float]:
        """Run until ``max_steps``; checkpoint every ``checkpoint_every`` steps."""
        from tqdm.auto import tqdm

        cfg = self.config
        self.rewards.train()  # running reward statistics update during training only
        params = self.trainable_parameters()
        main = self.accelerator.is_main_process
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="reward", disable=None or not main)
        if self.step == 0 and main:
            self._run_callbacks(0)
        while self.step < cfg.max_steps:
            loss, logs = self.compute_loss(self.step)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at step {self.step + 1}; stopped before saving. "
                    "Lower learning_rate or check the rewards; resume from the last checkpoint."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._average_gradients(params)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if not math.isfinite(float(norm)):
                raise NonFiniteLossError(
                    f"gradient norm is {float(norm)} at step {self.step + 1}; stopped before saving"
                )
            self.optimizer.step()
            self.step += 1
            self.history.append(logs["reward/reward"])
            logs["grad_norm"] = float(norm)
            bar.update(1)
            if main and self.step % cfg.log_every == 0:
                append_curve(self.config.out / CURVES_FILE, {"step": self.step, **logs})
                bar.set_postfix(reward=f"{logs['reward/reward']:.3f}")
            if main and self.step % cfg.probe_every == 0:
                self._run_callbacks(self.step)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        self.rewards.eval()
        return self.history

    def _average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of the gradients over processes (any parameter, used inside or outside a
        module's forward: the MLLM's meta tokens are)."""
        if self.accelerator.num_processes == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.flatten() for p in params])  # (P,): one all-reduce per step
        flat = self.accelerator.reduce(flat, reduction="mean")
        for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad.copy_(g.view_as(p))

    # -- monitoring ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, items: Sequence[str], users: Sequence[str | None], seed: int = 0
    ) -> np.ndarray:
        """Covers for (item, user) pairs as uint8 ``(N, H, W, 3)``, no gradient (monitoring)."""
        gen = torch.Generator().manual_seed(seed)
        h = self.size // self.vae_scale
        noise = torch.randn(len(items), self.unet.config.in_channels, h, h, generator=gen)
        tokens, _ = self.tokens(items, users)
        images, _ = self.sample(items, tokens, noise, 0)
        return (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)

    def _run_callbacks(self, step: int) -> None:
        for callback in self.callbacks:
            result = callback(self, step)
            if result:
                append_curve(self.config.out / CURVES_FILE, {"step": step, "probe": result})

    # -- save / cleanup --------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Atomically save model, reward statistics, LoRA, optimizer and trainer state."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        state = {
            "step": self.step,
            "rewards": self.history,
            "config": self.config.model_dump(mode="json"),
        }
        return save_checkpoint(
            self.checkpoint_dir, self.step, state=state, optimizer=self.optimizer,
            pretrained={"model": _RunState(self)}, keep=self.config.keep_checkpoints,
        )  # fmt: skip

    def save(self) -> Path:
        """Write the final ICG adapter to ``out/adapter`` and the reward stats (and LoRA) beside."""
        out = self.config.out
        if self.accelerator.is_main_process:
            atomic_save_dir(out / "adapter", self.icg.save_pretrained)
            self.rewards.save_stats(out / STATS_FILE)
            if self.lora_parameters:
                save_unet_lora(self.unet, out / LORA_FILE)
        self.accelerator.wait_for_everyone()
        return out / "adapter"

    def cleanup(self) -> None:
        """Remove the adapter's processors (and LoRA) from the base UNet; free the accelerator."""
        model = getattr(self, "model", None)
        if model is not None and model.adapter.is_installed:
            model.adapter.remove(self.unet)
        if self.lora_parameters:
            self.unet.delete_adapters(self.unet.active_adapters())
            self.lora_parameters = []
        if getattr(self, "accelerator", None) is not None:
            self.accelerator.free_memory()


def run_reward(
    config: RewardConfig,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    **parts: Any,
) -> RewardResult:
    """Stage B end to end: ``setup → train → save → cleanup``."""
    recipe = RewardRecipe(config, callbacks=callbacks, **parts)
    try:
        recipe.setup(resume=resume)
        if recipe.accelerator.is_main_process:
            write_run_config(config.out, config)
        history = recipe.train()
        adapter_dir = recipe.save()
    finally:
        recipe.cleanup()
    return RewardResult(rewards=history, adapter_dir=adapter_dir, steps=recipe.step)
