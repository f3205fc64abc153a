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
comes from ``(seed, process, s)``, so ``--resume`` continues exactly. Sampling lives in
`icg.training.rollout`. Nothing here reads the world's truth: monitoring callbacks are injected
by the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from icg.checkpoints import (
    latest_checkpoint,
    load_optimizer_state,
    load_trainer_state,
    save_checkpoint,
    write_run_config,
)
from icg.io import atomic_save_dir
from icg.models.paths import resolve_adapter_dir
from icg.rewards.factory import STATS_FILE, RewardSources, build_rewards
from icg.runs import start_run
from icg.seeding import seed_everything
from icg.training.common import (
    average_gradients,
    check_finite_grad_norm,
    check_finite_loss,
    load_frozen_base,
)
from icg.training.curves import CURVES_FILE, append_curve, truncate_curves
from icg.training.draft import token_drift
from icg.training.lora import (
    LORA_FILE,
    add_unet_lora,
    load_unet_lora,
    remove_unet_lora,
    save_unet_lora,
)
from icg.training.reward_config import RewardConfig
from icg.training.rollout import Rollout

logger = logging.getLogger(__name__)


# ---- the recipe --------------------------------------------------------------------------
@dataclass
class RewardResult:
    """What a finished run returns."""

    rewards: list[float]  # combined (normalised, weighted) reward per step
    adapter_dir: Path
    steps: int


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


class RewardRecipe(Rollout):
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
        from diffusers import DDIMScheduler, DDPMScheduler

        from icg.data import load_dataset
        from icg.models.icg_model import ICGModel

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
        self.checkpoint_dir = cfg.out / "checkpoints"
        ckpt = latest_checkpoint(self.checkpoint_dir) if resume else None
        if resume and ckpt is None:
            logger.warning(
                "--resume: no checkpoint in %s; starting from stage A", self.checkpoint_dir
            )
        model = stage_a if ckpt is None else ICGModel.from_pretrained(
            ckpt / "model", mllm=self._mllm, processor=self._processor
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
        self._prepare_data(load_dataset(cfg.data))
        if cfg.lora_rank > 0:
            self.lora_parameters = add_unet_lora(self.unet, cfg.lora_rank)
            if ckpt is not None and (ckpt / "model" / LORA_FILE).is_file():
                load_unet_lora(self.unet, ckpt / "model" / LORA_FILE)
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

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Meta tokens (+ MLLM LoRA), refiner, adapter, and the UNet LoRA when enabled."""
        return self.icg.trainable_parameters() + self.lora_parameters

    def _build_rewards(self):
        cfg = self.config
        sources = RewardSources(
            clip=cfg.clip, aesthetic_predictor=cfg.aesthetic_predictor,
            relevance_scale=cfg.relevance_scale, preference=cfg.preference,
        )  # fmt: skip
        return build_rewards(cfg.rewards, sources)

    # -- one step --------------------------------------------------------------------------
    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``step``: ``-reward + drift``, and what to log."""
        cfg = self.config
        d = self.draw(step)
        tokens, emb = self.tokens(d["items"], d["users"])
        without = None
        if cfg.user_guidance != 1:
            without, _ = self.tokens(d["items"], [None] * len(d["items"]))
        images, used = self.sample(d["items"], tokens, d["noise"], d["k"], without)
        titles = [self.titles[i] for i in d["items"]]
        reward, info = self.rewards(images, titles, emb, user_ids=d["users"])
        logs = {f"reward/{k}": float(v.float().mean()) for k, v in info.items()}
        logs.update(k=d["k"], grad_steps=len(used), cold=sum(u is None for u in d["users"]))
        loss = -reward.mean() + self.drift(tokens, d["items"], d["users"], step, logs)
        logs["loss"] = float(loss.detach())
        return loss, logs

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
            denoise = self._denoise_loss(step)
            total = total + cfg.drift_denoise_weight * denoise
            logs["drift/denoise"] = float(denoise.detach())
        return total

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
            logs["grad_norm"] = self.optimizer_step(loss, params)
            self.history.append(logs["reward/reward"])
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
        self.step += 1
        return float(norm)

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
            remove_unet_lora(self.unet)
            self.lora_parameters = []
        if getattr(self, "accelerator", None) is not None:
            self.accelerator.free_memory()


def run_reward(
    config: RewardConfig,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
    **parts: Any,
) -> RewardResult:
    """Stage B end to end: ``setup → train → save → cleanup``, with the configured trainer.
    The run folder is checked first (`icg.runs.start_run`: ``--resume`` continues only the
    same config, a fresh run into a used folder needs ``overwrite``)."""
    from icg.training.ranked import RankedRecipe  # it subclasses RewardRecipe

    start_run(config.out, config, kind="reward", resume=resume, overwrite=overwrite)
    recipe_class = RankedRecipe if config.trainer == "ranked" else RewardRecipe
    recipe = recipe_class(config, callbacks=callbacks, **parts)
    try:
        recipe.setup(resume=resume)
        if recipe.accelerator.is_main_process:
            write_run_config(config.out, config)
        history = recipe.train()
        adapter_dir = recipe.save()
    finally:
        recipe.cleanup()
    return RewardResult(rewards=history, adapter_dir=adapter_dir, steps=recipe.step)
