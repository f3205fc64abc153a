"""Stage A: align the ICG adapter with the denoising loss on the covers users prefer.

ICG (EMNLP 2025, Sec. 3.4, first stage): for each (user u, item i, cover x) example the frozen
base denoiser learns nothing; the trainable ICG parts (meta tokens, refiner, adapter, optional
LoRA) are trained with the base family's loss on x (`icg.training.objective`: noise prediction,
Ho et al. 2020, Eq. 14, for SD1.x/SDXL UNets; flow matching, Esser et al. 2024, for SD3/FLUX),
conditioned on the title, the item's reference image and the user's embedding. By default x is
the item's variant the click-trained preference model prefers for u, over every shown pair
(``targets="preferred"``); ``targets="clicks"`` fits the clicked covers themselves
(`icg.training.align_data`).

For the user path to learn: user dropout trains a fraction of each batch without its user (a
NaN row), so one model also learns the no-user branch that user guidance (`icg.models.guidance`)
contrasts with; clicks are position-debiased (`icg.training.click_weights`); the refiner has its
own, larger learning rate, because its FiLM output is zero-initialised (adaLN-Zero): at first only
its gate gets gradient, and Adam moves that by about one learning rate per step.

The recipe reads ``setup → train → save_checkpoint → cleanup``. It is seeded and deterministic:
the batch order and the noise of step ``s`` depend only on ``(seed, s)``, so ``--resume``
continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from icg.checkpoints import (
    latest_checkpoint,
    load_optimizer_state,
    load_trainer_state,
    save_checkpoint,
    write_run_config,
)
from icg.config import DEFAULT_BASE, DEFAULT_MLLM
from icg.data import load_dataset
from icg.io import atomic_save_dir
from icg.layout import ADAPTER_DIR, CHECKPOINT_MODEL_DIR, CHECKPOINTS_DIR
from icg.models.icg_model import ICGModel
from icg.models.user_prompt import load_style_vocabulary
from icg.runs import start_run
from icg.seeding import seed_everything
from icg.training.align_data import distil_user_prompt, prepare_align_data
from icg.training.click_weights import check_preference_source
from icg.training.common import (
    batch_indices,
    check_finite_grad_norm,
    check_finite_loss,
    default_size,
    dropped_rows,
    icg_parameter_groups,
    load_frozen_base,
    step_generator,
    user_token_effect,
    without_users,
)
from icg.training.conditioning import PromptEncoder, TextConditioning
from icg.training.ema import WeightEMA, ema_checkpoint_parts, named_parameters_of, restore_ema
from icg.training.init_adapter import InitAdapter, load_init_adapter
from icg.training.objective import training_objective

logger = logging.getLogger(__name__)


class AlignConfig(BaseModel):
    """Stage-A configuration (validated before any model is loaded)."""

    model_config = ConfigDict(extra="forbid")

    data: Path
    out: Path
    base: str = DEFAULT_BASE
    mllm: str = DEFAULT_MLLM
    init_adapter: InitAdapter = "none"
    seed: int = 0
    max_steps: int = Field(1000, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    refiner_learning_rate: float | None = Field(
        None, gt=0, description="the user refiner's learning rate; None: 10 × learning_rate"
    )
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    num_meta_tokens: int = Field(8, ge=1)
    num_tokens: int | None = Field(None, ge=1)
    refiner_hidden_dim: int = Field(64, ge=1)
    lora_rank: int = Field(0, ge=0)
    global_conditioning: bool = Field(
        True,
        description="the adapter also conditions the UNet's timestep embedding on the mean ICG "
        "token (icg.models.adapter), a global lever on style that cross-attention lacks",
    )
    read_image: bool = Field(
        True,
        description="the MLLM reads the item's reference image with its title; False: the "
        "title only (the ablation that shows what ICG gains from the image)",
    )
    resolution: int | None = Field(None, ge=8)
    text_dropout: float = Field(0.1, ge=0, le=1)
    user_refiner: bool = Field(
        True,
        description="the user refines the meta tokens (ICG's user path); False: no refiner, the "
        "user reaches the image only through the prompt's user words (the words-only ablation)",
    )
    user_dropout: float = Field(
        0.2, ge=0, le=1, description="fraction of each batch trained without its user"
    )
    targets: Literal["clicks", "preferred"] = Field(
        "preferred",
        description="what the denoising loss fits: per shown (user, item) the item's variant "
        "the preference model prefers for the user (needs preference), or the clicked covers; "
        "see icg.training.align_data",
    )
    click_weighting: Literal["uniform", "ips", "advantage"] = Field(
        "uniform",
        description="weight of each clicked cover: uniform, ips (1 / examination of its "
        "position) or advantage (its attractiveness for the clicker over the item's mean "
        "variant); ips and advantage read the preference model",
    )
    preference: Path | None = Field(
        None, description="a trained preference model folder (RUN/preference)"
    )
    click_weight_max: float = Field(
        10.0, ge=1, description="click weights are clipped here before normalising to mean 1"
    )
    base_prompt: str = Field(
        "a cover for {title}", description="the base model's text prompt; {title} is replaced"
    )
    user_words: int = Field(
        2,
        ge=0,
        description="the prompt also names the user's taste in this many style words, distilled "
        "from the preference model (icg.models.user_prompt); 0: no words; needs preference",
    )
    style_vocabulary: Path | None = Field(
        None,
        description="JSON {group: {phrase: CLIP text}} the user words come from; None: "
        "coverworld-tiny's (icg.zoo.vocabulary)",
    )
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # off until the recipe matrix measures it (docs/recipes.md); 0.999 averages ~the last 100
    # of 1,000 steps
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="the saved adapter is the EMA of the trained weights, "
        "this its largest decay (warm-up: icg.training.ema); null: the raw weights",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check_paths(self) -> AlignConfig:
        if not self.data.is_dir():
            raise ValueError(f"data: expected an existing data folder, got {str(self.data)!r}")
        check_preference_source(self.click_weighting, self.preference)
        if self.targets == "preferred":
            check_preference_source(self.targets, self.preference, setting="targets")
        if self.style_vocabulary is not None:
            load_style_vocabulary(self.style_vocabulary)  # a bad file fails before any training
        return self

    @property
    def refiner_lr(self) -> float:
        """The refiner's learning rate (``refiner_learning_rate`` or 10 × ``learning_rate``)."""
        return self.refiner_learning_rate or 10.0 * self.learning_rate


# ---- the recipe --------------------------------------------------------------------------
@dataclass
class AlignResult:
    """What a finished run returns."""

    losses: list[float]
    adapter_dir: Path
    steps: int
    user_effect: float | None = None  # see `icg.training.common.user_token_effect`


class AlignRecipe:
    """Stage-A training: ``setup()``, ``train()``, ``save_checkpoint()``, ``cleanup()``.

    Args:
        config: the validated configuration.
        base: a loaded diffusers SD pipeline (default: loaded from ``config.base``).
        mllm: a loaded MLLM (default: loaded from ``config.mllm``).
        processor: the MLLM's processor (required with ``mllm``).
    """

    def __init__(self, config: AlignConfig, base=None, mllm=None, processor=None) -> None:
        self.config = config
        self._base, self._mllm, self._processor = base, mllm, processor
        self.step = 0
        self.losses: list[float] = []
        self.user_effect: float | None = None

    # -- setup ---------------------------------------------------------------------------
    def setup(self, resume: bool = False) -> None:
        """Load data and models, build or restore the ICG model and the optimizer."""

        cfg = self.config
        seed_everything(cfg.seed)
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
        device = self.accelerator.device
        self._base, self._mllm, self._processor = load_frozen_base(
            device, self._base, self._mllm, self._processor,
            base_name=cfg.base, mllm_name=cfg.mllm, source="config",
        )  # fmt: skip
        base = self._base
        # the loss of the base's family: noise prediction (UNets) or flow matching (SD3 / FLUX)
        self.objective = training_objective(base)
        self.unet, self.vae = self.objective.denoiser, base.vae  # unet: the denoiser, any family
        self.noise_scheduler = self.objective.scheduler

        data = load_dataset(cfg.data)
        size = cfg.resolution or default_size(base)
        self.data = prepare_align_data(cfg, data, self.vae, PromptEncoder(base, size), size)
        user_dim = data.embedding_dim if cfg.user_refiner else 0  # 0: no refiner

        self.checkpoint_dir = cfg.out / CHECKPOINTS_DIR
        checkpoint = latest_checkpoint(self.checkpoint_dir) if resume else None
        if resume and checkpoint is None:
            logger.warning(
                "--resume: no checkpoint in %s; starting from scratch", self.checkpoint_dir
            )
        if checkpoint is not None:
            model = ICGModel.from_pretrained(
                checkpoint / CHECKPOINT_MODEL_DIR, mllm=self._mllm, processor=self._processor
            )
        else:
            torch.manual_seed(cfg.seed)
            model = ICGModel.build(
                self.unet,
                self._mllm,
                self._processor,
                num_meta_tokens=cfg.num_meta_tokens,
                num_tokens=cfg.num_tokens,
                user_dim=user_dim,
                refiner_hidden_dim=cfg.refiner_hidden_dim,
                base_model=cfg.base,
                mllm_name_or_path=cfg.mllm,
                lora_rank=cfg.lora_rank,
                base_prompt=cfg.base_prompt,
                global_conditioning=cfg.global_conditioning,
                read_image=cfg.read_image,
            )
            load_init_adapter(model, cfg.init_adapter)  # none: the zero-initialised start
        if model.user_prompt is None and cfg.user_words > 0 and cfg.preference is not None:
            model.user_prompt = distil_user_prompt(cfg, data)
        model.to(device)
        model.adapter.install(self.unet)
        optimizer = torch.optim.AdamW(
            icg_parameter_groups(model, cfg.learning_rate, cfg.refiner_lr),
            weight_decay=cfg.weight_decay,
        )
        self.ema = None
        if cfg.ema_decay is not None:
            trained = named_parameters_of(model, model.trainable_parameters())
            self.ema = WeightEMA(trained, cfg.ema_decay)
        if checkpoint is not None:
            load_optimizer_state(checkpoint, optimizer)
            state = load_trainer_state(checkpoint)
            self.step, self.losses = int(state["step"]), list(state["losses"])
            restore_ema(self.ema, checkpoint, state)
            logger.info("resumed from %s at step %d", checkpoint, self.step)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    @property
    def icg(self):
        """The ICG model without accelerate's wrappers."""
        return self.accelerator.unwrap_model(self.model)

    # -- one step --------------------------------------------------------------------------
    def compute_loss(self, step: int) -> torch.Tensor:
        """The denoising loss of ``step`` (batch, noise and timesteps from ``(seed, step)``)."""
        cfg, data = self.config, self.data
        idx = batch_indices(len(data.item_ids), cfg.batch_size, step, cfg.seed)
        gen = step_generator(cfg.seed, step)
        device = self.accelerator.device
        items = [data.item_ids[i] for i in idx]
        unique = list(dict.fromkeys(items))  # one MLLM forward per unique item
        feats = self.icg.encoder([data.titles[i] for i in unique], [data.images[i] for i in unique])
        rows = torch.tensor([unique.index(i) for i in items], device=feats.device)
        feats = feats[rows]  # (B, K, D)
        latents = data.latents[idx].to(device)  # (B, C, h, w)
        noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
        t = self.objective.timesteps(len(idx), gen)  # (B,) timesteps, or sigmas (flow)
        drop = torch.rand(len(idx), generator=gen) < cfg.text_dropout
        no_user = dropped_rows(gen, len(idx), cfg.user_dropout)  # drawn last: old streams stay
        users = torch.stack([data.user_vectors[data.user_ids[i]] for i in idx])  # (B, U)
        users = without_users(users, no_user).to(device) if self.icg.refiner is not None else None
        tokens = self.model(feats, users)  # (B, K', T)

        rows = ["" if d else data.titles[i] for d, i in zip(drop.tolist(), items, strict=True)]
        text = TextConditioning.stack([data.text_states[r] for r in rows]).to(device)  # (B, L, C)
        weights = None if data.weights is None else data.weights[idx].to(device)  # (B,)
        return self.objective.loss(latents, noise, t, text, tokens, weights)

    # -- train -----------------------------------------------------------------------------
    def train(self) -> list[float]:
        """Run until ``max_steps``; checkpoint every ``checkpoint_every`` steps."""

        cfg = self.config
        self.model.train()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="align", disable=None)
        while self.step < cfg.max_steps:
            loss = self.compute_loss(self.step)
            check_finite_loss(loss, self.step, hint="check the data")
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            norm = self.accelerator.clip_grad_norm_(self.icg.trainable_parameters(), cfg.grad_clip)
            check_finite_grad_norm(norm, self.step)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
            self.step += 1
            self.losses.append(float(loss.item()))
            bar.update(1)
            if self.step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{self.losses[-1]:.4f}")
                logger.info("step %d loss %.5f", self.step, self.losses[-1])
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        if self.ema is not None:  # from here on the model holds the weights that draw
            self.ema.copy_to_model()
        self.user_effect = self.measure_user_effect()
        if self.user_effect is not None:
            logger.info("stage A: user effect on the tokens %.5f", self.user_effect)
        return self.losses

    @torch.no_grad()
    def measure_user_effect(self, max_items: int = 8, max_users: int = 8) -> float | None:
        """`user_token_effect` on the first items and users (sorted ids); None without a refiner."""
        if self.icg.refiner is None:
            return None
        data = self.data
        items = sorted(data.titles)[:max_items]
        users = torch.stack([data.user_vectors[u] for u in sorted(data.user_vectors)[:max_users]])
        feats = self.icg.encoder([data.titles[i] for i in items], [data.images[i] for i in items])
        return user_token_effect(self.icg, feats, users)  # feats: (I, K, D)

    def save_checkpoint(self) -> Path:
        """Atomically save the raw model, EMA, optimizer and trainer state; prune old ones."""
        ema_state, ema_tensors = ema_checkpoint_parts(self.ema)
        state = {
            "step": self.step,
            "losses": self.losses,
            "config": self.config.model_dump(mode="json"),
            **ema_state,
        }
        return save_checkpoint(
            self.checkpoint_dir,
            self.step,
            state=state,
            optimizer=self.optimizer,
            pretrained={CHECKPOINT_MODEL_DIR: self.icg},
            tensors=ema_tensors,
            keep=self.config.keep_checkpoints,
        )

    def save_adapter(self) -> Path:
        """Write the final adapter (after `train`: the EMA weights) to ``out/adapter``, atomically."""
        return atomic_save_dir(self.config.out / ADAPTER_DIR, self.icg.save_pretrained)

    def cleanup(self) -> None:
        """Remove the adapter's processors from the base UNet and free the accelerator."""
        if getattr(self, "model", None) is not None and self.icg.adapter.is_installed:
            self.icg.adapter.remove(self.unet)
        if getattr(self, "accelerator", None) is not None:
            self.accelerator.free_memory()


def run_align(
    config: AlignConfig, resume: bool = False, base=None, mllm=None, processor=None,
    overwrite: bool = False,
) -> AlignResult:  # fmt: skip
    """Stage A end to end: ``setup → train → save → cleanup``."""
    start_run(config.out, config, kind="align", resume=resume, overwrite=overwrite)
    recipe = AlignRecipe(config, base=base, mllm=mllm, processor=processor)
    try:
        recipe.setup(resume=resume)
        if recipe.accelerator.is_main_process:
            write_run_config(config.out, config)
        losses = recipe.train()
        adapter_dir = recipe.save_adapter()
    finally:
        recipe.cleanup()
    return AlignResult(losses, adapter_dir, recipe.step, recipe.user_effect)
