"""The `flow` recipe end to end: reuse the VAE and text tower, cache, train, publish, gate."""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import SD3Transformer2DModel

from icg.checkpoints import latest_checkpoint, load_trainer_state
from icg.config import load_config
from icg.zoo import evaldata
from icg.zoo.recipes import _base
from icg.zoo.recipes.flow.config import FlowRecipeConfig
from icg.zoo.recipes.flow.data import flow_data
from icg.zoo.recipes.flow.gates import measure, write_report
from icg.zoo.recipes.flow.loop import train_transformer
from icg.zoo.recipes.flow.models import assemble, frozen_text_tower, frozen_vae
from icg.zoo.recipes.sd.state import RecipeState, default_work_dir
from icg.zoo.registry import get

logger = logging.getLogger(__name__)


def default_sources() -> tuple[Path, Path]:
    """The shipped `clip` folder (text tower) and `sd` folder (VAE)."""
    return get("clip").path, get("sd").path


def source_label(path: Path) -> str:
    """``zoo:NAME`` for a shipped zoo folder, else the folder's name (no machine path is
    written into a published folder)."""
    for name in ("sd", "clip"):
        if Path(path).resolve() == get(name).path.resolve():
            return f"zoo:{name}"
    return Path(path).name


def setup(
    work: Path, cfg: FlowRecipeConfig, clip_dir: Path | None, vae_from: Path | None
) -> tuple[Any, Any, Any, dict[str, torch.Tensor], RecipeState]:
    """The frozen VAE and text tower (copied into `work` once) and the latent/prompt cache."""
    default_clip, default_sd = default_sources()
    clip_dir, vae_from = Path(clip_dir or default_clip), Path(vae_from or default_sd)
    state = RecipeState(work / "state.json")
    if state.get("clip_dir") is None:
        state.update(
            clip_dir=str(clip_dir),
            vae_from=str(vae_from),
            sources=f"VAE from {source_label(vae_from)}, text tower from {source_label(clip_dir)}",
        )
    vae = frozen_vae(work, vae_from)
    text_encoder, tokenizer = frozen_text_tower(work, clip_dir)
    if state.get("latents_wall_s") is None:
        t0 = time.time()
        data = flow_data(work, cfg, vae, text_encoder, tokenizer)
        state.update(latents_wall_s=time.time() - t0)
    else:
        data = flow_data(work, cfg, vae, text_encoder, tokenizer)
    return vae, text_encoder, tokenizer, data, state


def train(
    out: Path,
    *,
    resume: bool = False,
    seed: int = 0,
    config: FlowRecipeConfig | None = None,
    clip_dir: Path | None = None,
    vae_from: Path | None = None,
    work_dir: Path | None = None,
) -> None:
    """Train coverworld-tiny `flow` into `out`: cache -> transformer -> publish -> gates.

    Args:
        out: the published folder (``StableDiffusion3Pipeline.save_pretrained`` + README.md +
            gates.json).
        resume: continue from the work folder's checkpoints; otherwise start from scratch.
        seed: torch seed (initialisation, noise, batches); the data seeds are fixed zoo seeds.
        config: recipe configuration (defaults: the model the lead trains).
        clip_dir: a ``CLIPModel`` folder whose text tower is used (default: zoo `clip`).
        vae_from: a published `sd` folder whose VAE is used (default: zoo `sd`).
        work_dir: checkpoints and caches (default `default_work_dir(out)`).
    """
    cfg = config or FlowRecipeConfig()
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    if not resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    vae, text_encoder, tokenizer, data, state = setup(work, cfg, clip_dir, vae_from)
    state.update(config=cfg.model_dump(mode="json"), seed=seed)
    transformer = train_transformer(work, cfg, state, seed, data).eval()
    del data
    publish(out, cfg, state, vae, transformer, text_encoder, tokenizer)


def publish(
    out: Path,
    cfg: FlowRecipeConfig,
    state: RecipeState,
    vae: Any,
    transformer: Any,
    text_encoder: Any,
    tokenizer: Any,
) -> dict[str, float]:
    """Save the pipeline into `out` (staged, then renamed), measure the gates, write the card."""
    out = Path(out)
    t0 = time.time()
    pipe = assemble(vae, transformer, text_encoder, tokenizer, cfg)
    staged = _base.stage(out, lambda folder: pipe.save_pretrained(str(folder)))
    gate_set = evaldata.fresh_covers(cfg.gate_items)
    metrics = measure(staged, gate_set, steps=cfg.gate_steps)
    _base.publish_files(staged, out)
    wall = {
        "latents_s": state.get("latents_wall_s", 0.0),
        "transformer_s": state.get("transformer_wall_s", 0.0),
        "gates_s": time.time() - t0,
    }
    wall["total_s"] = sum(wall.values())
    params = {
        "transformer": _base.count_parameters(transformer),
        "vae (reused)": _base.count_parameters(vae),
        "text_encoder (reused, both slots)": _base.count_parameters(text_encoder),
    }
    write_report(out, cfg, metrics, wall, params, gate_set.source, state)
    logger.info("flow: published %s, gates %s", out, metrics)
    return metrics


def publish_latest_checkpoint(out: Path, work: Path, cfg: FlowRecipeConfig) -> dict[str, float]:
    """Publish the EMA transformer of the newest checkpoint (a run still in progress); the step
    it was taken at is recorded in ``gates.json``."""
    ckpt = latest_checkpoint(work / "transformer_ckpt")
    if ckpt is None:
        raise FileNotFoundError(f"work={work}: no transformer checkpoint to publish")
    state = RecipeState(work / "state.json")
    progress = load_trainer_state(ckpt)
    state.update(transformer_wall_s=progress["wall_s"], published_step=progress["step"])
    transformer = SD3Transformer2DModel.from_pretrained(str(ckpt / "ema")).eval()
    vae, text_encoder, tokenizer, _, state = setup(
        work, cfg, state.get("clip_dir"), state.get("vae_from")
    )
    return publish(out, cfg, state, vae, transformer, text_encoder, tokenizer)


def main(argv: list[str] | None = None) -> None:
    """``python -m icg.zoo.recipes.flow --out DIR [--config YAML] [--resume] [--phase P]``."""
    parser = argparse.ArgumentParser(description="Train coverworld-tiny `flow`, or one phase.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None, help="FlowRecipeConfig YAML")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the config and stop")
    parser.add_argument(
        "--phase",
        choices=["all", "transformer", "publish-latest"],
        default="all",
        help="transformer: cache + training, no publishing; publish-latest: ship the newest "
        "checkpoint's EMA weights",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(FlowRecipeConfig, args.config, threads=args.threads, steps=args.steps)
    if args.dry_run:
        logger.info("flow config: %s", cfg.model_dump_json(indent=2))
        return
    torch.set_num_threads(cfg.threads)
    work = default_work_dir(args.out)
    if args.phase == "publish-latest":
        publish_latest_checkpoint(args.out, work, cfg)
    elif args.phase == "transformer":
        work.mkdir(parents=True, exist_ok=True)
        *_, data, state = setup(work, cfg, None, None)
        state.update(config=cfg.model_dump(mode="json"), seed=args.seed)
        train_transformer(work, cfg, state, args.seed, data)
    else:
        train(args.out, resume=args.resume, seed=args.seed, config=cfg)
