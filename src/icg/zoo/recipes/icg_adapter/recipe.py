"""The `icg-adapter` recipe: setup → train → save_checkpoint → publish → gates → card."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image

from icg.models.icg_model import ICGModel
from icg.pipeline import ICGPipeline
from icg.training.common import (
    check_finite_grad_norm,
    check_finite_loss,
    denoising_loss,
    encode_images,
    encode_prompt,
    load_frozen_base,
    step_generator,
    vae_scale_factor,
)
from icg.training.ema import WeightEMA, named_parameters_of
from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo.recipes import _base
from icg.zoo.recipes.icg_adapter.config import DATA_OFFSET, IcgAdapterRecipeConfig
from icg.zoo.recipes.icg_adapter.gates import THRESHOLDS, measure

logger = logging.getLogger(__name__)

HELDOUT_STEP = 900_000  # batches of steps HELDOUT_STEP.. measure the held-out loss (never trained)


@dataclass
class Batch:
    """The renders of one step: titles (N), PIL covers (N) and their uint8 pixels (N, H, W, 3)."""

    titles: list[str]
    covers: list[Image.Image]
    pixels: np.ndarray


def batch(step: int, cfg: IcgAdapterRecipeConfig, size: int) -> Batch:
    """The training renders of `step`: a pure function of the step (zoo seed range only)."""
    s = sample_covers(
        cfg.batch_size, seed=zoo_seed(DATA_OFFSET + step), size=size, defect_rate=cfg.defect_rate
    )
    return Batch(list(s.titles), [Image.fromarray(a) for a in s.images], s.images)


@dataclass
class Setup:
    """What a run holds: the frozen base and MLLM, the ICG model, optimizer, EMA, scheduler."""

    base: Any
    model: ICGModel
    optimizer: torch.optim.Optimizer
    ema: WeightEMA | None
    scheduler: DDPMScheduler
    size: int


def setup(cfg: IcgAdapterRecipeConfig, seed: int, base=None, mllm=None, processor=None) -> Setup:
    """Load the frozen base and MLLM (or take the loaded ones) and build a fresh, zero-init ICG
    model without a user refiner (no users exist at pretraining), its optimizer and EMA."""
    _base.setup_torch(seed, cfg.threads)
    base, mllm, processor = load_frozen_base(
        torch.device(cfg.device), base, mllm, processor,
        base_name=cfg.base, mllm_name=cfg.mllm, source="IcgAdapterRecipeConfig",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = ICGModel.build(
        base.unet, mllm, processor,
        num_meta_tokens=cfg.num_meta_tokens, num_tokens=cfg.num_tokens, user_dim=0,
        base_model=cfg.base, mllm_name_or_path=cfg.mllm, base_prompt=cfg.base_prompt,
        global_conditioning=cfg.global_conditioning, read_image=cfg.read_image,
    )  # fmt: skip
    model.to(cfg.device)
    model.adapter.install(base.unet)
    optimizer = torch.optim.AdamW(
        model.trainable_parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    ema = None
    if cfg.ema_decay is not None:
        ema = WeightEMA(named_parameters_of(model, model.trainable_parameters()), cfg.ema_decay)
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    size = cfg.image_size or base.unet.config.sample_size * vae_scale_factor(base.vae)
    return Setup(base, model, optimizer, ema, scheduler, size)


def compute_loss(
    run: Setup, cfg: IcgAdapterRecipeConfig, step: int, seed: int, text_cache: dict
) -> torch.Tensor:
    """The denoising loss of `step`: each render redrawn from its own MLLM features (title +
    cover), its text prompt dropped to "" with probability ``text_dropout``; noise, timesteps
    and the dropout are drawn from ``(seed, step)`` only."""
    b = batch(step, cfg, run.size)
    base = run.base
    latents = encode_images(base.vae, b.covers, run.size)  # (B, C, h, w)
    gen = step_generator(seed, step)  # CPU draws: the same on every device
    noise = torch.randn(latents.shape, generator=gen).to(latents)
    t = torch.randint(0, run.scheduler.config.num_train_timesteps, (len(b.titles),), generator=gen)
    t = t.to(latents.device)
    drop = torch.rand(len(b.titles), generator=gen) < cfg.text_dropout  # (B,)
    prompts = [
        "" if d else p for d, p in zip(drop.tolist(), run.model.prompts(b.titles), strict=True)
    ]
    for p in prompts:
        if p not in text_cache:
            text_cache[p] = encode_prompt(base.tokenizer, base.text_encoder, p)  # (L, C_text)
    text = torch.stack([text_cache[p] for p in prompts])  # (B, L, C_text)
    if len(text_cache) > 4 * cfg.batch_size:  # titles rarely repeat: keep only ""
        for key in [k for k in text_cache if k]:
            del text_cache[key]
    feats = run.model.encoder(b.titles, b.covers)  # (B, K, D)
    tokens = run.model(feats.to(latents.device))  # (B, K', T)
    return denoising_loss(base.unet, run.scheduler, latents, noise, t, text, tokens)


@torch.no_grad()
def heldout_losses(
    run: Setup, cfg: IcgAdapterRecipeConfig, seed: int, batches: int = 4
) -> dict[str, float]:
    """Denoising loss with the empty prompt on `batches` fixed batches (steps ``HELDOUT_STEP +
    i``, never trained on), with the adapter and without it (scale 0, what the zero-initialised
    adapter draws): how much of the cover the adapter's tokens carry."""
    empty = cfg.model_copy(update={"text_dropout": 1.0})
    scale, out = run.model.adapter.scale, {}
    try:
        for name, value in (("heldout_loss", scale), ("heldout_loss_no_adapter", 0.0)):
            run.model.adapter.set_scale(value)
            steps = range(HELDOUT_STEP, HELDOUT_STEP + batches)
            out[name] = float(
                np.mean([compute_loss(run, empty, s, seed, {}).item() for s in steps])
            )
    finally:
        run.model.adapter.set_scale(scale)
    return out


def train(
    out: Path,
    *,
    resume: bool = False,
    seed: int = 0,
    config: IcgAdapterRecipeConfig | None = None,
    base=None,
    mllm=None,
    processor=None,
) -> None:
    """Pretrain the ICG adapter into `out` (an ``ICGModel.save_pretrained`` folder + gates.json
    + README.md), checkpointing into ``out/checkpoints`` (``resume``: continue from there).

    Args:
        out: the published folder.
        resume: continue from the newest checkpoint (model, optimizer, RNG, EMA, progress).
        seed: torch seed (initialisation, noise, dropout); the data seeds are fixed zoo seeds.
        config: recipe configuration (defaults: the shipped model).
        base, mllm, processor: loaded models instead of ``config.base`` / ``config.mllm``
            (the names are still recorded in the published folder).
    """
    cfg = config or IcgAdapterRecipeConfig()
    out = Path(out)
    run = setup(cfg, seed, base, mllm, processor)
    model = run.model
    state = (
        _base.resume_progress(out, model, run.optimizer, run.ema) if resume else None
    ) or _base.Progress()
    timer = _base.Timer(before=state.elapsed_s)
    logger.info(
        "icg-adapter: %d trainable parameters, steps %d..%d, %dpx renders",
        _base.count_parameters(model), state.step, cfg.steps, run.size,
    )  # fmt: skip
    try:
        train_steps(run, cfg, state, seed, out, timer)
        if run.ema is not None:  # the published weights are the average
            run.ema.copy_to_model()
        model.eval()
        _publish(out, run, cfg, state, timer.total(), heldout_losses(run, cfg, seed))
    finally:  # a caller's base is left as it was given, even after a crash
        if model.adapter.is_installed:
            model.adapter.remove(run.base.unet)


def train_steps(
    run: Setup,
    cfg: IcgAdapterRecipeConfig,
    state: _base.Progress,
    seed: int,
    out: Path,
    timer: _base.Timer,
) -> None:
    """Optimizer steps from ``state.step`` to ``cfg.steps``, checkpointing every
    ``checkpoint_every`` steps and at the end."""
    model = run.model
    text_cache: dict[str, torch.Tensor] = {}
    bar = _base.progress(cfg.steps, state.step, "icg-adapter")
    model.train()
    while state.step < cfg.steps:
        lr = _base.cosine_lr(state.step, cfg.steps, cfg.learning_rate, cfg.warmup)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss = compute_loss(run, cfg, state.step, seed, text_cache)
        check_finite_loss(loss, state.step, hint="check the base and the MLLM")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.grad_clip)
        check_finite_grad_norm(norm, state.step)
        run.optimizer.step()
        if run.ema is not None:
            run.ema.update()
        state.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}", refresh=False)
        if state.step % cfg.log_every == 0:
            state.history.append((state.step, float(loss.item())))
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            state.elapsed_s = timer.total()
            _base.save_progress(out, model, run.optimizer, state, run.ema)
    bar.close()


def _publish(
    out: Path,
    run: Setup,
    cfg: IcgAdapterRecipeConfig,
    state: _base.Progress,
    train_s: float,
    heldout: dict[str, float],
) -> None:
    """Save the ICG model folder atomically, measure the gates on fresh renders, write the card."""
    model = run.model
    model.adapter.remove(run.base.unet)  # the gate pipeline installs it again

    def gates(folder: Path, gate_set) -> dict[str, float]:
        pipe = ICGPipeline(run.base, model)
        try:
            metrics = measure(folder, gate_set, steps=cfg.gate_steps,
                              guidance=cfg.gate_guidance, pipe=pipe)  # fmt: skip
        finally:
            pipe.remove_adapter()
        return metrics | heldout

    done = _base.publish_with_gates(
        out, "icg-adapter", model, model.save_pretrained, gates, cfg.gate_items, THRESHOLDS,
        train_s,
    )  # fmt: skip
    write_card(out, cfg, done, state)
    logger.info("icg-adapter gates: %s", done.metrics)


def write_card(
    out: Path, cfg: IcgAdapterRecipeConfig, done: _base.Published, state: _base.Progress
) -> None:
    """The model card of a published `icg-adapter` folder, from its measured gates."""
    m = done.metrics
    _base.write_card(
        out,
        name="icg-adapter",
        summary=(
            "ICG's meta tokens and cover adapter (no user refiner), pretrained IP-Adapter-style "
            f"for `{cfg.base}` and `{cfg.mllm}`: each cover is denoised from its own MLLM "
            f"features (title + cover), its text prompt dropped {cfg.text_dropout:.0%} of the "
            "time, so the adapter carries motif, palette and style. Stage A starts from it with "
            "`icg train align --init-adapter zoo:icg-adapter`; its refiner starts at zero, so "
            f"the first forward is this model's. Held-out denoising loss with the empty prompt: "
            f"{m['heldout_loss']:.4f}, against {m['heldout_loss_no_adapter']:.4f} without the "
            f"adapter ({state.step} steps)."
        ),
        loading=(
            "from icg.pipeline import ICGPipeline\n"
            "pipe = ICGPipeline.from_pretrained(PATH)  # base and MLLM as recorded\n"
            'image = pipe(["The Crimson Orb"], [cover], prompt="").images[0]'
        ),
        data=(
            f"{cfg.steps} × {cfg.batch_size} renders from `sample_covers(seed=zoo_seed(k))`, "
            f"k = {DATA_OFFSET}..{DATA_OFFSET + cfg.steps - 1}, defect rate {cfg.defect_rate}, "
            "with their titles; the gates draw on fresh renders of the world seed range."
        ),
        recipe=(
            "denoising loss of the frozen base with the ICG tokens (as stage A), AdamW, linear "
            f"warmup + cosine, EMA of the weights (decay {cfg.ema_decay}) published"
        ),
        config=cfg.model_dump(),
        parameters=done.parameters,
        gates={k: v for k, v in done.metrics.items() if not k.startswith("style_chance")},
        thresholds=THRESHOLDS,
        gate_data=f"{done.gate_source}; empty text prompt, {cfg.gate_steps} steps, "
        f"guidance {cfg.gate_guidance}",
        wall_time_s=done.wall_time_s,
        loading_heading="Loading (icg's ICGPipeline: the adapter is not a stock diffusers part)",
    )
