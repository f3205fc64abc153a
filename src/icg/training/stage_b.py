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

import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

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
    load_frozen_base,
)
from icg.training.conditioning import FAMILIES, FLOW_FAMILIES, base_family
from icg.training.curves import append_curve, truncate_curves
from icg.training.guards import StageBGuards
from icg.training.lora import add_unet_lora, load_unet_lora, remove_unet_lora, save_unet_lora
from icg.training.objective import training_objective
from icg.training.reward_config import RewardConfig
from icg.training.rollout import PairPool, build_pool
from icg.training.sampling import token_drift
from icg.training.stage_b_sampling import StageBSampling

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


class StageBTrainer(StageBSampling):
    """A stage-B trainer: ``setup()``, ``train()``, ``save()``, ``cleanup()``.

    Args:
        config: the validated configuration.
        base: a loaded SD pipeline (default: from ``config.base`` or the adapter's record).
        mllm, processor: a loaded MLLM and processor (default: from the adapter's record).
        rewards: a `MultiReward` (default: built from ``config.rewards``).
        callbacks: called as ``callback(trainer, step)`` every ``probe_every`` steps on the main
            process (monitoring only: their results are logged, never used by the loss).
        heldout_reward: the tripwire's held-out reward (default: from ``tripwire_preference``).

    ``families``: the base families (`icg.training.conditioning.FAMILIES`) a trainer's loop
    supports; ``setup`` refuses others by name. SD1.x by default: a trainer that calls only
    `sample_latents`, `tokens`, `drift` and ``self.objective`` may declare all four.
    """

    families: tuple[str, ...] = ("sd",)

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
        self.family = base_family(self._base)
        self.flow = self.family in FLOW_FAMILIES
        self.check_family()
        # the stage-A loss of the base's family (the drift regulariser); unet: any denoiser
        self.objective = training_objective(self._base)
        self.unet, self.vae = self.objective.denoiser, self._base.vae
        scheduler_config = self._base.scheduler.config
        sampler = FlowMatchEulerDiscreteScheduler if self.flow else DDIMScheduler
        self.scheduler = sampler.from_config(scheduler_config)
        self.train_scheduler = (
            DDPMScheduler.from_config(scheduler_config)
            if cfg.drift_denoise_weight and not self.flow
            else None
        )  # what a UNet trainer's own denoising loss may use
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

    def check_family(self) -> None:
        """Refuse a base this trainer (or the configuration) does not support, naming it."""
        name = type(self).__name__
        if self.family not in self.families:
            raise ValueError(
                f"base: {name} trains {', '.join(self.families)} bases, this one is "
                f"{self.family} (the draft trainer trains {', '.join(FAMILIES)})"
            )
        if self.flow and self.config.strength < 1:
            raise ValueError(
                f"strength: reference-guided sampling (strength < 1) is for UNet bases, "
                f"this one is {self.family}; set strength to 1"
            )

    @property
    def icg(self) -> ICGModel:
        """The ICG model being trained."""
        return self.model

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Meta tokens (+ MLLM LoRA), refiner, adapter, and the UNet LoRA when enabled."""
        return self.icg.trainable_parameters() + self.lora_parameters

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
        t = self.objective.timesteps(len(idx), gen)  # (B,) timesteps, or sigmas (flow)
        text = pool.conditioning([item_ids[i] for i in idx])  # (B, L, C_text), ...
        return self.objective.loss(latents, noise, t, text, tokens)

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
        guard_state, tensors = self.checkpoint_parts()
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

    def checkpoint_parts(self) -> tuple[dict, dict]:
        """Trainer-state entries and named tensors a checkpoint keeps beside the model."""
        return self.guards.checkpoint_parts()

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
        """Remove the adapter's processors (and LoRA) from the base denoiser; free the
        accelerator."""
        if self.model is not None and self.model.adapter.is_installed:
            self.model.adapter.remove(self.unet)
        if self.lora_parameters:
            remove_unet_lora(self.unet)
            self.lora_parameters = []
        if self.accelerator is not None:
            self.accelerator.free_memory()
