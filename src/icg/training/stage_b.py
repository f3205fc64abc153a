"""What both stage-B trainers share: models, the pair pool, sampling, drift, updates, saving.

`StageBTrainer` owns all a trainer needs besides its loop: ``setup`` loads the frozen base, the
stage-A (or checkpointed) model, the `PairPool`, rewards and optimizer, and sets every attribute
its methods read; a trainer (`icg.training.draft`, `icg.training.ranked`) adds ``train()``. The
drift anchor keeps the model near stage A (token distance; optionally the stage-A denoising loss
on clicked covers). Every draw of step ``s`` comes from ``(seed, process, s)`` (exact resume);
monitoring callbacks are injected by the caller, nothing here reads the world's truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, DDPMScheduler
from torch.func import functional_call

from icg.checkpoints import (
    latest_checkpoint,
    load_optimizer_state,
    load_trainer_state,
    save_checkpoint,
)
from icg.data import load_dataset
from icg.io import atomic_save_dir
from icg.layout import (
    ADAPTER_DIR,
    CHECKPOINT_MODEL_DIR,
    CHECKPOINTS_DIR,
    CURVES_FILE,
    LORA_FILE,
    STATS_FILE,
)
from icg.models.icg_model import ICGModel
from icg.models.paths import resolve_adapter_dir
from icg.rewards.factory import RewardSources, build_rewards
from icg.seeding import seed_everything
from icg.training.common import (
    average_gradients,
    check_finite_grad_norm,
    check_finite_loss,
    denoising_loss,
    load_frozen_base,
    step_generator,
)
from icg.training.curves import append_curve, truncate_curves
from icg.training.guards import StageBGuards
from icg.training.lora import add_unet_lora, load_unet_lora, remove_unet_lora, save_unet_lora
from icg.training.reward_config import RewardConfig
from icg.training.rollout import PairPool, build_pool
from icg.training.sampling import decode, denoise, start_step, token_drift, truncated_steps

logger = logging.getLogger(__name__)

Callback = Callable[["StageBTrainer", int], dict | None]


class _RunState:
    """What one checkpoint holds beside the optimizer: the ICG model, reward stats, UNet LoRA."""

    def __init__(self, trainer: StageBTrainer) -> None:
        self.trainer = trainer

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.trainer.icg.save_pretrained(directory)
        self.trainer.rewards.save_stats(directory / STATS_FILE)
        if self.trainer.lora_parameters:
            save_unet_lora(self.trainer.unet, directory / LORA_FILE)


class StageBTrainer:
    """A stage-B trainer: ``setup()``, ``train()``, ``save()``, ``cleanup()``.

    Args:
        config: the validated configuration.
        base: a loaded SD pipeline (default: from ``config.base`` or the adapter's record).
        mllm, processor: a loaded MLLM and processor (default: from the adapter's record).
        rewards: a `MultiReward` (default: built from ``config.rewards``).
        callbacks: called as ``callback(trainer, step)`` every ``probe_every`` steps on the main
            process (monitoring only: their results are logged, never used by the loss).
        heldout_reward: the tripwire's held-out reward (default: from ``tripwire_preference``).
    """

    def __init__(
        self,
        config: RewardConfig,
        base=None,
        mllm=None,
        processor=None,
        rewards=None,
        callbacks: Sequence[Callback] = (),
        heldout_reward=None,
    ) -> None:
        self.config = config
        self._base, self._mllm, self._processor = base, mllm, processor
        self.rewards, self._heldout_reward = rewards, heldout_reward
        self.callbacks = list(callbacks)
        self.step = 0
        self.history: list[float] = []
        self.lora_parameters: list[torch.nn.Parameter] = []
        self.model: ICGModel | None = None
        self.accelerator: Accelerator | None = None

    # -- setup ---------------------------------------------------------------------------
    def setup(self, resume: bool = False) -> None:
        """Load data and models, restore or load the stage-A model, build rewards and optimizer."""
        cfg = self.config
        seed_everything(cfg.seed)
        threads = torch.get_num_threads()
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
        torch.set_num_threads(threads)  # accelerate's MULTI_CPU setup resets it; keep the caller's
        device = self.accelerator.device
        init_dir = resolve_adapter_dir(cfg.init)
        record = ICGModel.read_config(init_dir)
        self._base, self._mllm, self._processor = load_frozen_base(
            device, self._base, self._mllm, self._processor,
            base_name=cfg.base or record.get("base_model"),
            mllm_name=cfg.mllm or record.get("mllm"), source=str(init_dir),
        )  # fmt: skip
        self.unet, self.vae = self._base.unet, self._base.vae
        scheduler_config = self._base.scheduler.config
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        self.train_scheduler = (
            DDPMScheduler.from_config(scheduler_config) if cfg.drift_denoise_weight else None
        )  # the stage-A denoising loss of the drift regulariser
        stage_a = ICGModel.from_pretrained(init_dir, mllm=self._mllm, processor=self._processor)
        self.checkpoint_dir = cfg.out / CHECKPOINTS_DIR
        ckpt = latest_checkpoint(self.checkpoint_dir) if resume else None
        if resume and ckpt is None:
            logger.warning(
                "--resume: no checkpoint in %s; starting from stage A", self.checkpoint_dir
            )
        saved = None if ckpt is None else ckpt / CHECKPOINT_MODEL_DIR
        model = stage_a if saved is None else ICGModel.from_pretrained(
            saved, mllm=self._mllm, processor=self._processor
        )  # fmt: skip
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
        self.pool: PairPool = build_pool(cfg, load_dataset(cfg.data), self._base, model)
        if cfg.lora_rank > 0:
            self.lora_parameters = add_unet_lora(self.unet, cfg.lora_rank)
            if saved is not None and (saved / LORA_FILE).is_file():
                load_unet_lora(self.unet, saved / LORA_FILE)
        sources = RewardSources(
            clip=cfg.clip, aesthetic_predictor=cfg.aesthetic_predictor,
            relevance_scale=cfg.relevance_scale, preference=cfg.preference,
        )  # fmt: skip
        if self.rewards is None:
            self.rewards = build_rewards(cfg.rewards, sources)
        self.rewards.to(device)
        self.rewards.gather = self.accelerator.gather
        params = self.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self.guards = StageBGuards(self, sources, self._heldout_reward)  # EMA, tripwire
        if ckpt is not None:
            load_optimizer_state(ckpt, self.optimizer)
            state = load_trainer_state(ckpt)
            self.step, self.history = int(state["step"]), list(state["rewards"])
            self.rewards.load_stats(saved / STATS_FILE)
            self.guards.restore(ckpt, state)
            logger.info("resumed from %s at step %d", ckpt, self.step)
        if self.accelerator.is_main_process:
            truncate_curves(self.config.out / CURVES_FILE, self.step)

    @property
    def icg(self) -> ICGModel:
        """The ICG model being trained."""
        return self.model

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Meta tokens (+ MLLM LoRA), refiner, adapter, and the UNet LoRA when enabled."""
        return self.icg.trainable_parameters() + self.lora_parameters

    # -- sampling --------------------------------------------------------------------------
    def generator(self, step: int, salt: int = 0) -> torch.Generator:
        """The generator of ``step`` on this process (``salt`` separates independent streams)."""
        rank = self.accelerator.process_index
        return step_generator(self.config.seed + 7907 * rank + 104_729 * salt, step)

    def tokens(
        self, items: Sequence[str], users: Sequence[str | None], params: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ICG tokens ``(B, K', T)`` for (item, user) pairs (one MLLM forward per distinct item),
        with ``params`` (e.g. the stage-A reference) in place of the current parameters."""
        pool, device = self.pool, self.accelerator.device
        unique = list(dict.fromkeys(items))
        args = ([pool.titles[i] for i in unique], [pool.item_images[i] for i in unique])
        enc = self.icg.encoder
        if params is None:
            feats = enc(*args)
        else:
            prefix = "encoder."
            sub = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            feats = functional_call(enc, sub, args, strict=False)
        index = torch.tensor([unique.index(i) for i in items], device=feats.device)
        feats = feats[index]  # (B, K, D)
        emb = None
        if self.icg.refiner is not None and pool.user_dim > 0:
            nan = torch.full((pool.user_dim,), float("nan"))
            emb = torch.stack([nan if u is None else pool.user_vectors[u] for u in users])
            emb = emb.to(device)  # (B, E)
        if params is None:
            return self.model(feats, emb), emb
        rest = {k: v for k, v in params.items() if not k.startswith("encoder.")}
        return functional_call(self.icg, rest, (feats, emb), strict=False), emb

    def start_latents(self, items: Sequence[str], noise: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Latents ``(B, C, h, w)`` sampling starts from and its first step (sets the timesteps):
        noise, or (``strength < 1``) each item's own cover noised to that step (SDEdit)."""
        steps, device = self.config.num_inference_steps, self.accelerator.device
        self.scheduler.set_timesteps(steps, device=device)
        noise = noise.to(device, self.unet.dtype)
        start = start_step(steps, self.config.strength)
        if start == 0:
            return noise * self.scheduler.init_noise_sigma, 0
        ref = torch.stack([self.pool.ref_latents[i] for i in items]).to(noise)  # the covers
        t0 = self.scheduler.timesteps[start : start + 1].repeat(len(items))
        return self.scheduler.add_noise(ref, noise, t0), start

    def sample_latents(
        self,
        items: Sequence[str],
        tokens: torch.Tensor,
        noise: torch.Tensor,
        k: int = 0,
        tokens_without_user: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """Final latents ``(B, C, h, w)`` with gradients through the last ``k`` steps (0: none),
        and the steps that carried them.

        With ``tokens_without_user`` (the same items' tokens without a user), sampling applies
        the configured user guidance."""
        cfg, pool = self.config, self.pool
        latents, start = self.start_latents(items, noise)
        text = pool.text_states(list(items))  # (B, L, C_text)
        uncond = pool.text[""].expand_as(text) if cfg.guidance_scale > 1 else None
        steps = truncated_steps(cfg.num_inference_steps, k) if k > 0 else range(0)
        guidance = {}
        if tokens_without_user is not None and cfg.user_guidance != 1:
            guidance = {
                "user_guidance": cfg.user_guidance,
                "tokens_without_user": tokens_without_user,
            }
        return denoise(
            self.unet, self.scheduler, latents, text, tokens, steps,
            cfg.guidance_scale, uncond, cfg.gradient_checkpointing, start, **guidance,
        )  # fmt: skip

    def sample(
        self,
        items: Sequence[str],
        tokens: torch.Tensor,
        noise: torch.Tensor,
        k: int,
        tokens_without_user: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """Covers ``(B, 3, H, W)`` in [0, 1] (see `sample_latents`) and the steps with grad."""
        latents, used = self.sample_latents(items, tokens, noise, k, tokens_without_user)
        return decode(self.vae, latents, self.config.gradient_checkpointing), used

    @torch.no_grad()
    def generate(
        self, items: Sequence[str], users: Sequence[str | None], seed: int = 0
    ) -> np.ndarray:
        """Covers for (item, user) pairs as uint8 ``(N, H, W, 3)``, no gradient (monitoring)."""
        gen = torch.Generator().manual_seed(seed)
        h = self.pool.size // self.pool.vae_scale
        noise = torch.randn(len(items), self.unet.config.in_channels, h, h, generator=gen)
        tokens, _ = self.tokens(items, users)
        without = None
        if self.config.user_guidance != 1 and any(u is not None for u in users):
            without, _ = self.tokens(items, [None] * len(items))
        images, _ = self.sample(items, tokens, noise, 0, without)
        return (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)

    # -- the drift anchor ------------------------------------------------------------------
    def drift(
        self,
        tokens: torch.Tensor,
        items: Sequence[str],
        users: Sequence[str | None],
        step: int,
        logs: dict[str, float],
    ) -> torch.Tensor:
        """The anchor against collapse: token drift from stage A and the stage-A denoising loss
        on clicked covers, as configured (0 when both are off); their values go to ``logs``."""
        cfg = self.config
        total = tokens.new_zeros(())
        if cfg.drift_token_weight > 0:
            with torch.no_grad():
                ref, _ = self.tokens(items, users, params=self.reference)
            drift = token_drift(tokens, ref)
            total = total + cfg.drift_token_weight * drift
            logs["drift/tokens"] = float(drift.detach())
        if cfg.drift_denoise_weight > 0:
            denoise_loss = self.click_denoise_loss(step)
            total = total + cfg.drift_denoise_weight * denoise_loss
            logs["drift/denoise"] = float(denoise_loss.detach())
        return total

    def click_denoise_loss(self, step: int) -> torch.Tensor:
        """The stage-A denoising loss on clicked covers (the drift regulariser) of ``step``."""
        cfg, pool = self.config, self.pool
        gen = self.generator(step, salt=1)
        item_ids, user_ids = pool.clicks
        idx = torch.randint(len(item_ids), (cfg.drift_denoise_batch,), generator=gen)
        tokens, _ = self.tokens([item_ids[i] for i in idx], [user_ids[i] for i in idx])
        latents = pool.click_latents[idx]
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        t = torch.randint(
            0, self.train_scheduler.config.num_train_timesteps, (len(idx),), generator=gen
        )
        t = t.to(latents.device)
        text = pool.text_states([item_ids[i] for i in idx])  # (B, L, C_text)
        return denoising_loss(self.unet, self.train_scheduler, latents, noise, t, text, tokens)

    # -- updates ---------------------------------------------------------------------------
    def train(self) -> list[float]:
        """Train until ``max_steps``; each trainer defines its loop."""
        raise NotImplementedError(f"{type(self).__name__} defines no training loop")

    def optimizer_step(self, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
        """One guarded update: finite loss, backward, cross-process mean, clip, step; returns the
        gradient norm and advances ``self.step``."""
        check_finite_loss(loss, self.step, hint="check the rewards")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.accelerator, params)
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        check_finite_grad_norm(norm, self.step)
        self.optimizer.step()
        self.guards.after_step()
        self.step += 1
        return float(norm)

    def run_callbacks(self, step: int) -> None:
        """Call the monitoring callbacks and log what they return beside the curves."""
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
        guard_state, tensors = self.guards.checkpoint_parts()
        state = {
            "step": self.step,
            "rewards": self.history,
            "config": self.config.model_dump(mode="json"),
            **guard_state,
        }
        return save_checkpoint(
            self.checkpoint_dir, self.step, state=state, optimizer=self.optimizer,
            pretrained={CHECKPOINT_MODEL_DIR: _RunState(self)}, tensors=tensors,
            keep=self.config.keep_checkpoints,
        )  # fmt: skip

    def save(self) -> Path:
        """Write the final ICG adapter to ``out/adapter`` and the reward stats (and LoRA) beside
        (after ``train``: the weights that draw, `StageBGuards.finish`)."""
        out = self.config.out
        if self.accelerator.is_main_process:
            atomic_save_dir(out / ADAPTER_DIR, self.icg.save_pretrained)
            self.rewards.save_stats(out / STATS_FILE)
            if self.lora_parameters:
                save_unet_lora(self.unet, out / LORA_FILE)
        self.accelerator.wait_for_everyone()
        return out / ADAPTER_DIR

    def cleanup(self) -> None:
        """Remove the adapter's processors (and LoRA) from the base UNet; free the accelerator."""
        if self.model is not None and self.model.adapter.is_installed:
            self.model.adapter.remove(self.unet)
        if self.lora_parameters:
            remove_unet_lora(self.unet)
            self.lora_parameters = []
        if self.accelerator is not None:
            self.accelerator.free_memory()
