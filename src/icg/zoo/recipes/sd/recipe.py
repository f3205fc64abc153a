"""The `sd` recipe end to end: the four phases, publishing, and the ``python -m`` entry point."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from icg.checkpoints import latest_checkpoint, load_trainer_state
from icg.config import DEFAULT_CLIP, load_config
from icg.io import atomic_save_dir
from icg.zoo import evaldata
from icg.zoo.recipes import _base
from icg.zoo.recipes.sd.config import SDRecipeConfig
from icg.zoo.recipes.sd.gates import measure, write_report
from icg.zoo.recipes.sd.models import assemble
from icg.zoo.recipes.sd.state import RecipeState, default_work_dir
from icg.zoo.recipes.sd.unet import frozen_text_tower, save_text_tower, train_unet, unet_data
from icg.zoo.recipes.sd.vae import finetune_decoder, train_vae
from icg.zoo.registry import get

logger = logging.getLogger(__name__)


def default_clip_dir() -> Path:
    """The shipped `clip` folder, whose text tower and tokenizer the pipeline uses."""

    return get(DEFAULT_CLIP).path


def train(
    out: Path,
    *,
    resume: bool = False,
    seed: int = 0,
    config: SDRecipeConfig | None = None,
    clip_dir: Path | None = None,
    work_dir: Path | None = None,
    vae_from: Path | None = None,
) -> None:
    """Train coverworld-tiny `sd` into `out`: VAE -> latents -> UNet -> decoder ft -> gates.

    Args:
        out: the shipped folder (``StableDiffusionPipeline.save_pretrained`` + README.md +
            gates.json).
        resume: continue from the work folder's checkpoints; otherwise start from scratch.
        seed: torch seed (initialisation, noise, batches); the data seeds are fixed zoo seeds.
        config: recipe configuration (defaults: the shipped model).
        clip_dir: the `clip` folder whose text tower and tokenizer are used (default: shipped).
        work_dir: checkpoints and caches (default `default_work_dir(out)`).
        vae_from: a published `sd` folder whose VAE and text tower are reused (`adopt_vae`):
            only the latents and the UNet are trained.
    """
    cfg = config or SDRecipeConfig()
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    if not resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    state = RecipeState(work / "state.json")
    state.update(config=cfg.model_dump(mode="json"), seed=seed)
    if vae_from is not None:
        adopt_vae(work, Path(vae_from), state)

    vae = train_vae(work, cfg, state, seed).eval()
    text_encoder, tokenizer = frozen_text_tower(work, Path(clip_dir or default_clip_dir()))
    data = cache_latents(work, cfg, state, vae, text_encoder, tokenizer)
    unet = train_unet(work, cfg, state, seed, data).eval()
    del data
    vae = finetune_decoder(work, cfg, state, seed).eval()
    publish(out, cfg, state, vae, unet, text_encoder, tokenizer)


def adopt_vae(work: Path, base: Path, state: RecipeState) -> None:
    """Start a run from a published `sd` folder's VAE and text tower, so only the UNet trains.

    The published VAE is the decoder-fine-tuned one. Decoder fine-tuning freezes the encoder, so
    its latent space is the phase-1 VAE's: it stands in for both ``vae`` and ``vae_ft``. The
    phase wall times and held-out PSNR are carried over from the base's ``gates.json``.
    """

    base = Path(base)
    if not (base / "vae" / "config.json").exists():
        raise FileNotFoundError(f"vae_from={base}: not a StableDiffusionPipeline folder")
    if state.get("vae_done") and state.get("vae_from") == str(base):
        return
    vae = AutoencoderKL.from_pretrained(base / "vae")
    for name in ("vae", "vae_ft"):
        atomic_save_dir(work / name, vae.save_pretrained)

    save_text_tower(
        work,
        CLIPTextModel.from_pretrained(str(base / "text_encoder")),
        CLIPTokenizer.from_pretrained(str(base / "tokenizer")),
    )
    gates = json.loads((base / "gates.json").read_text()) if (base / "gates.json").exists() else {}
    wall = gates.get("wall_time_by_phase_s", {})
    state.update(
        vae_done=True,
        decoder_done=True,
        vae_from=str(base),
        vae_wall_s=wall.get("vae_s", 0.0),
        decoder_wall_s=wall.get("decoder_s", 0.0),
        vae_scaling_factor=vae.config.scaling_factor,
        vae_ft_psnr_heldout=gates.get("vae_psnr_heldout_zoo_db"),
        notes=f"VAE and text tower taken from the published {base.name} (`--vae-from`); "
        "VAE wall times are that run's.",
    )
    logger.info("sd: VAE and text tower adopted from %s", base)


def cache_latents(
    work: Path, cfg: SDRecipeConfig, state: RecipeState, vae: Any, text_encoder: Any, tokenizer: Any
) -> dict[str, torch.Tensor]:
    """Phase 2 (`unet_data`), recording its wall time the first time it runs."""
    t0 = time.time()
    data = unet_data(work, cfg, vae, text_encoder, tokenizer)
    if state.get("latents_wall_s") is None:
        state.update(latents_wall_s=time.time() - t0)
    return data


def publish(
    out: Path,
    cfg: SDRecipeConfig,
    state: RecipeState,
    vae: Any,
    unet: Any,
    text_encoder: Any,
    tokenizer: Any,
) -> dict[str, float]:
    """Save the pipeline into `out` (staged, then renamed), measure the gates, write the card."""

    out = Path(out)
    t0 = time.time()
    pipe = assemble(vae, unet, text_encoder, tokenizer, cfg)
    staged = _base.stage(out, lambda folder: pipe.save_pretrained(str(folder)))
    gate_set = evaldata.fresh_covers(cfg.gate_items)
    metrics = measure(staged, gate_set.titles, gate_set.motif, gate_set.palette, gate_set)
    _base.publish_files(staged, out)
    wall = {
        "vae_s": state["vae_wall_s"],
        "latents_s": state["latents_wall_s"],
        "unet_s": state.get("unet_wall_s", 0.0),
        "decoder_s": state["decoder_wall_s"],
        "gates_s": time.time() - t0,
    }
    wall["total_s"] = sum(wall.values())
    params = {
        "vae": _base.count_parameters(vae),
        "unet": _base.count_parameters(unet),
        "text_encoder": _base.count_parameters(text_encoder),
    }
    write_report(out, cfg, metrics, wall, params, gate_set.source, state)
    logger.info("sd: published %s, gates %s", out, metrics)
    return metrics


def publish_latest_checkpoint(out: Path, work: Path, cfg: SDRecipeConfig) -> dict[str, float]:
    """Publish the EMA UNet of the newest UNet checkpoint (a run still in progress).

    The UNet step it was taken at is recorded in the card and in ``gates.json``.
    """

    state = RecipeState(work / "state.json")
    ckpt = latest_checkpoint(work / "unet_ckpt")
    if ckpt is None:
        raise FileNotFoundError(f"work={work}: no UNet checkpoint to publish")
    progress = load_trainer_state(ckpt)
    state.update(unet_wall_s=progress["wall_s"], published_unet_step=progress["step"])
    unet = UNet2DConditionModel.from_pretrained(ckpt / "ema").eval()
    vae = AutoencoderKL.from_pretrained(work / "vae_ft").eval()
    text_encoder, tokenizer = frozen_text_tower(work, default_clip_dir())
    return publish(out, cfg, state, vae, unet, text_encoder, tokenizer)


def main(argv: list[str] | None = None) -> None:
    """``python -m icg.zoo.recipes.sd --out DIR [--config YAML] [--resume] [--phase P]``."""
    parser = argparse.ArgumentParser(description="Train coverworld-tiny `sd`, or one phase.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None, help="SDRecipeConfig YAML")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument(
        "--vae-from", type=Path, default=None, help="reuse this published sd's VAE and text tower"
    )
    parser.add_argument(
        "--phase", choices=["vae", "decoder", "unet", "publish-latest", "all"], default="all"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(SDRecipeConfig, args.config, threads=args.threads, unet_steps=args.unet_steps)
    torch.set_num_threads(cfg.threads)
    work = default_work_dir(args.out)
    work.mkdir(parents=True, exist_ok=True)
    state = RecipeState(work / "state.json")
    if args.phase == "vae":
        train_vae(work, cfg, state, args.seed)
    elif args.phase == "decoder":  # may run beside the UNet phase: it keeps the latent space
        finetune_decoder(work, cfg, state, args.seed)
    elif args.phase == "publish-latest":  # ship the newest UNet checkpoint of a running phase
        publish_latest_checkpoint(args.out, work, cfg)
    elif args.phase == "unet":  # latents + UNet only (needs the vae phase and the clip weights)
        text_encoder, tokenizer = frozen_text_tower(work, default_clip_dir())
        vae = train_vae(work, cfg, state, args.seed).eval()
        data = cache_latents(work, cfg, state, vae, text_encoder, tokenizer)
        train_unet(work, cfg, state, args.seed, data)
    else:
        train(args.out, resume=args.resume, seed=args.seed, config=cfg, vae_from=args.vae_from)
