"""coverworld-tiny `sd`: a Stable-Diffusion-format directory trained on CoverWorld renders.

The recipe reads as setup -> train -> save_checkpoint -> cleanup, in three resumable phases:

1. ``vae``: an ``AutoencoderKL`` (64px RGB <-> 16x16x4 latents) on fresh zoo renders every step,
   L1 + L2 + edge reconstruction and a small KL; then the latent ``scaling_factor`` (1 / std of
   the latents) is measured and written into the VAE config.
2. ``latents``: a fixed set of zoo renders is encoded once (latents x scaling_factor) and its
   prompts ``"a cover for <title>"`` are run once through the frozen tiny CLIP text tower.
3. ``unet``: a ``UNet2DConditionModel`` on the cached latents, v-prediction on a cosine schedule
   (zero terminal SNR, so sampling from pure noise matches training), min-SNR loss weighting,
   and the prompt dropped to ``""`` 10% of the time for classifier-free guidance.

Finally the parts are assembled with ``StableDiffusionPipeline.save_pretrained`` (DDIM scheduler
with trailing spacing, no safety checker) and a model card with the measured gates is written.

Every phase checkpoints atomically (a temporary folder renamed into place) into a work folder
outside the shipped weights, so ``train(out, resume=True)`` continues where a run stopped.
Data seeds come from ``icg.world.seeds.zoo_seed`` only, never from world or oracle ranges.

Run in the background::

    python -m icg.zoo.recipes.sd --out src/icg/zoo/weights/sd --resume
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from icg.world.seeds import zoo_seed

logger = logging.getLogger(__name__)

# Offsets inside the zoo seed range, one per use, so phases never share renders.
VAE_DATA_OFFSET = 0  # VAE step k renders with zoo_seed(k)
LATENT_DATA_OFFSET = 1_000_000  # latent cache chunk c renders with zoo_seed(1_000_000 + c)
DECODER_DATA_OFFSET = 2_000_000  # decoder fine-tuning step k renders with zoo_seed(2_000_000 + k)
HELDOUT_OFFSET = 9_000_000  # held-out renders for the recipe's own PSNR checks

PROMPT_TEMPLATE = "a cover for {title}"
VAE_INIT_LOGVAR = -10.0
CLIP_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "clip"


@dataclass(frozen=True)
class SDRecipeConfig:
    """Everything the `sd` recipe needs; defaults are the shipped model.

    Args:
        image_size: cover edge in pixels.
        vae_channels: AutoencoderKL block widths; len - 1 downsamplings (64 -> 16).
        latent_channels: latent depth.
        vae_steps: optimisation steps of the VAE, each on a fresh batch of renders.
        vae_full_steps: the last steps, on whole covers; the ones before train on random
            `vae_crop` crops (the VAE is fully convolutional, so crops cost a quarter and teach
            the same local code; the whole-cover steps adapt it to borders and layout).
        vae_crop: crop edge of the crop steps.
        vae_batch: crops per crop step.
        vae_full_batch: whole covers per whole-cover step.
        vae_lr: peak AdamW learning rate of the VAE.
        vae_kl_weight: weight of the KL summed over latent elements (loss terms are pixel means).
        vae_edge_weight: weight of the L1 on horizontal/vertical finite differences.
        decoder_steps: steps of decoder-only fine-tuning on whole covers (encoder frozen).
        decoder_batch: whole covers per decoder step.
        decoder_lr: peak learning rate of the decoder fine-tuning.
        unet_channels: UNet block widths (16 -> 8 -> 4 latent resolution).
        unet_steps: optimisation steps of the UNet.
        unet_batch: latents per UNet step.
        unet_lr: peak AdamW learning rate of the UNet.
        ema_decay: largest decay of the weight EMA that is shipped.
        num_latents: size of the cached latent/prompt set.
        unet_defect_rate: defect rate of the UNet's renders (lower than the platform's 0.25,
            so that the base model draws clean covers).
        cfg_drop: probability of replacing the prompt by "" during UNet training.
        min_snr_gamma: min-SNR loss weighting (Hang et al. 2023); 0 disables.
        num_train_timesteps: diffusion steps of the training schedule.
        ckpt_every: steps between atomic checkpoints.
        eval_every: VAE steps between held-out PSNR checks.
        gate_items: fresh titles (and covers) the recipe measures its gates on.
        threads: torch CPU threads.
    """

    image_size: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    vae_steps: int = 900
    vae_full_steps: int = 100
    vae_crop: int = 32
    vae_batch: int = 64
    vae_full_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-7
    vae_edge_weight: float = 0.5
    decoder_steps: int = 2000
    decoder_batch: int = 16
    decoder_lr: float = 1e-3
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_steps: int = 2500
    unet_batch: int = 64
    unet_lr: float = 1.5e-3
    ema_decay: float = 0.995
    num_latents: int = 8_192
    unet_defect_rate: float = 0.1
    cfg_drop: float = 0.1
    min_snr_gamma: float = 5.0
    num_train_timesteps: int = 1000
    ckpt_every: int = 100
    eval_every: int = 250
    gate_items: int = 512
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_size % 2 ** (len(self.vae_channels) - 1):
            raise ValueError(
                f"image_size={self.image_size}: expected a multiple of "
                f"{2 ** (len(self.vae_channels) - 1)} for vae_channels={self.vae_channels}"
            )
        if not 0.0 <= self.cfg_drop < 1.0:
            raise ValueError(f"cfg_drop={self.cfg_drop}: expected 0 <= cfg_drop < 1")

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


# ----------------------------------------------------------------------------- builders


def build_vae(cfg: SDRecipeConfig) -> Any:
    """A fresh AutoencoderKL with 3 encoder/decoder blocks and 16x16x4 latents at 64px.

    The posterior log-variance starts at `VAE_INIT_LOGVAR` (std 0.007) instead of 0: with a
    tiny KL weight nothing else shrinks it quickly, and unit posterior noise on the latents
    drowns the low-variance colour channels for hundreds of steps.
    """
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=8,
        sample_size=cfg.image_size,
        scaling_factor=1.0,
        mid_block_add_attention=False,  # purely convolutional: crop training transfers
    )
    with torch.no_grad():
        logvar = slice(cfg.latent_channels, 2 * cfg.latent_channels)  # quant_conv: (mean, logvar)
        vae.quant_conv.weight[logvar].mul_(0.01)
        vae.quant_conv.bias[logvar].fill_(VAE_INIT_LOGVAR)
    return vae


def build_unet(cfg: SDRecipeConfig, cross_attention_dim: int) -> Any:
    """A fresh UNet2DConditionModel over (latent_channels, 16, 16) latents."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        # attention at 8x8 and 4x4 only: 16x16 self-attention costs 3x the step time on CPU
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_train_scheduler(cfg: SDRecipeConfig) -> Any:
    """DDPM training schedule: cosine betas (Nichol & Dhariwal 2021, Sec. 3.2), v-prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
    )


def build_sample_scheduler(cfg: SDRecipeConfig) -> Any:
    """DDIM sampler over the training betas, trailing spacing so the first step is t=T-1
    (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", Sec. 3.3)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # only read by "leading" spacing; 1 keeps the pipeline's check quiet
        timestep_spacing="trailing",
    )


# ----------------------------------------------------------------------------- small pure helpers


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, 3, H, W)
    return x.float() / 127.5 - 1.0


def psnr(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 (or [0, 255] float) images of shape (N, H, W, C)."""
    ref = reference.astype(np.float64) / 255.0
    est = estimate.astype(np.float64) / 255.0
    mse = ((ref - est) ** 2).reshape(len(ref), -1).mean(axis=1)
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def edge_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of two (N, C, H, W) images."""
    dxa, dxb = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    dya, dyb = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    return (dxa - dxb).abs().mean() + (dya - dyb).abs().mean()


def cosine_lr(step: int, total: int, warmup: int = 50, floor: float = 0.05) -> float:
    """Linear warm-up then cosine decay to `floor` (a multiplier of the peak rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def min_snr_weight(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Loss weight of v-prediction under min-SNR-gamma (Hang et al. 2023, Eq. 8): min(snr, g)/(snr+1)."""
    if gamma <= 0:
        return torch.ones_like(snr)
    return torch.clamp(snr, max=gamma) / (snr + 1.0)


def prompts_for(titles: list[str]) -> list[str]:
    """The plain prompt of the recipe and of the gates: ``"a cover for <title>"``."""
    return [PROMPT_TEMPLATE.format(title=t) for t in titles]


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, step: int, objects: dict[str, Any], keep: int = 1) -> Path:
    """Write ``folder/ckpt-<step>`` atomically: a temp folder renamed into place, older removed.

    ``objects`` maps a name to either a ``save_pretrained``-able model (saved as a subfolder) or a
    picklable object (saved with ``torch.save`` as ``<name>.pt``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"ckpt-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=folder))
    for name, obj in objects.items():
        if hasattr(obj, "save_pretrained"):
            obj.save_pretrained(tmp / name, safe_serialization=True)
        else:
            torch.save(obj, tmp / f"{name}.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(folder.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete ``ckpt-*`` folder (temp folders are never named so), or None."""
    found = sorted(folder.glob("ckpt-*")) if folder.exists() else []
    return found[-1] if found else None


def _atomic_save_dir(model: Any, final: Path) -> None:
    """``model.save_pretrained`` into ``final`` through a temp folder and a rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


class _State:
    """The recipe's small JSON state (phase wall times, metrics), rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def update(self, **values: Any) -> None:
        """Merge `values` into the file (re-read first: a phase may run in another process)."""
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
        self.data.update(values)
        _atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- phase 1: VAE


def random_crops(images: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """One random `crop` x `crop` window per image of uint8 (N, H, W, 3)."""
    n, h, w, _ = images.shape
    ys = rng.integers(0, h - crop + 1, n)
    xs = rng.integers(0, w - crop + 1, n)
    return np.stack(
        [im[y : y + crop, x : x + crop] for im, y, x in zip(images, ys, xs, strict=True)]
    )


def vae_batch(step: int, cfg: SDRecipeConfig) -> np.ndarray:
    """The uint8 training images of VAE step `step`: a pure function of the step."""
    from icg.world.sampling import sample_covers

    seed = zoo_seed(VAE_DATA_OFFSET + step)
    if step >= cfg.vae_steps - cfg.vae_full_steps:
        return sample_covers(cfg.vae_full_batch, seed, size=cfg.image_size).images
    images = sample_covers(cfg.vae_batch, seed, size=cfg.image_size).images
    return random_crops(images, cfg.vae_crop, np.random.default_rng(seed))


def vae_loss(
    vae: Any, x: torch.Tensor, cfg: SDRecipeConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + L2 + edge) plus a small KL of one batch x (N, 3, H, W) in [-1, 1]."""
    posterior = vae.encode(x).latent_dist
    z = posterior.sample()  # (N, 4, H/4, W/4)
    rec = vae.decode(z).sample  # (N, 3, H, W)
    l1 = (rec - x).abs().mean()
    l2 = F.mse_loss(rec, x)
    edge = edge_l1(rec, x)
    kl = posterior.kl().mean()  # summed over latent elements, mean over the batch
    loss = l1 + l2 + cfg.vae_edge_weight * edge + cfg.vae_kl_weight * kl
    psnr_db = 10.0 * math.log10(4.0 / max(l2.item(), 1e-12))  # [-1, 1] range -> peak 2
    return loss, {"loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr_db}


@torch.no_grad()
def reconstruct(vae: Any, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Encode (posterior mode) and decode uint8 (N, H, W, 3) images; returns uint8 (N, H, W, 3)."""
    out = []
    for i in range(0, len(images), batch):
        x = to_model_range(images[i : i + batch])
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample  # (B, 3, H, W)
        rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        out.append(rec.permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def vae_psnr(vae: Any, images: np.ndarray) -> float:
    """Mean per-image reconstruction PSNR (dB) of uint8 (N, H, W, 3) images."""
    return float(psnr(images, reconstruct(vae, images)).mean())


def heldout_renders(n: int, chunk: int = 0, size: int = 64) -> np.ndarray:
    """Zoo renders no recipe phase trains on (default defect rate, like platform covers)."""
    from icg.world.sampling import sample_covers

    return sample_covers(n, zoo_seed(HELDOUT_OFFSET + chunk), size=size).images


def train_vae(work: Path, cfg: SDRecipeConfig, state: _State, seed: int) -> Any:
    """Phase 1: train the AutoencoderKL and set its scaling_factor; returns the final VAE."""
    from diffusers import AutoencoderKL

    final = work / "vae"
    if final.exists() and state.get("vae_done"):
        logger.info("vae: done already (%s)", final)
        return AutoencoderKL.from_pretrained(final)

    ckpt_dir = work / "vae_ckpt"
    ckpt = latest_checkpoint(ckpt_dir)
    torch.manual_seed(seed)
    if ckpt is None:
        vae = build_vae(cfg)
        start, wall, history = 0, 0.0, []
    else:
        vae = AutoencoderKL.from_pretrained(ckpt / "vae")
        extra = torch.load(ckpt / "trainer.pt", weights_only=True)
        start, wall, history = extra["step"], extra["wall_s"], extra["history"]
        torch.set_rng_state(extra["rng"])
        logger.info("vae: resuming from %s (step %d)", ckpt, start)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    if ckpt is not None:
        opt.load_state_dict(extra["optimizer"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, cfg.vae_steps))
    for _ in range(start):
        sched.step()
    n_params = sum(p.numel() for p in vae.parameters())
    logger.info("vae: %.2fM params, steps %d..%d", n_params / 1e6, start, cfg.vae_steps)

    val = heldout_renders(256)
    t0 = time.time() - wall
    bar = tqdm(
        range(start, cfg.vae_steps), desc="vae", mininterval=20, initial=start, total=cfg.vae_steps
    )
    for step in bar:
        loss, info = vae_loss(vae, to_model_range(vae_batch(step, cfg)), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(
            loss=f"{info['loss']:.4f}", psnr=f"{info['psnr']:.1f}", kl=f"{info['kl']:.0f}"
        )
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.vae_steps:
            vae.eval()
            val_psnr = vae_psnr(vae, val)
            vae.train()
            history.append({"step": done, "val_psnr": val_psnr, **info})
            logger.info("vae step %d: %s val_psnr=%.2f dB", done, info, val_psnr)
        if done % cfg.ckpt_every == 0 or done == cfg.vae_steps:
            extra = {
                "step": done,
                "wall_s": time.time() - t0,
                "history": history,
                "rng": torch.get_rng_state(),
                "optimizer": opt.state_dict(),
            }
            save_checkpoint(ckpt_dir, done, {"vae": vae, "trainer": extra})
    wall = time.time() - t0

    vae.eval()
    mean, std = latent_channel_stats(vae, cfg)
    standardize_latents(vae, mean, std)
    scale = latent_scaling_factor(vae, cfg)  # ~1 after standardising: a check
    fresh = heldout_renders(512, chunk=1)
    fresh_psnr = vae_psnr(vae, fresh)
    _atomic_save_dir(vae, final)
    state.update(
        vae_done=True,
        vae_wall_s=wall,
        vae_params=n_params,
        vae_scaling_factor=1.0,
        vae_latent_scale_check=scale,
        vae_latent_channel_mean=mean.tolist(),
        vae_latent_channel_std=std.tolist(),
        vae_psnr_heldout=fresh_psnr,
        vae_history=history,
    )
    logger.info(
        "vae: done in %.0f s, scaling_factor=%.4f, held-out PSNR %.2f dB", wall, scale, fresh_psnr
    )
    return vae


def decoder_batch(step: int, cfg: SDRecipeConfig) -> np.ndarray:
    """Whole covers of decoder fine-tuning step `step` (seeds disjoint from `vae_batch`)."""
    from icg.world.sampling import sample_covers

    seed = zoo_seed(DECODER_DATA_OFFSET + step)
    return sample_covers(cfg.decoder_batch, seed, size=cfg.image_size).images


def finetune_decoder(work: Path, cfg: SDRecipeConfig, state: _State, seed: int) -> Any:
    """Phase 4: fine-tune the VAE decoder with the encoder frozen (the SD "ft-MSE" recipe).

    The latent space the UNet was trained in stays exactly the same; only the reconstruction
    sharpens. Returns the fine-tuned VAE.
    """
    from diffusers import AutoencoderKL

    final = work / "vae_ft"
    if final.exists() and state.get("decoder_done"):
        logger.info("decoder: done already (%s)", final)
        return AutoencoderKL.from_pretrained(final)
    ckpt = latest_checkpoint(work / "decoder_ckpt")
    torch.manual_seed(seed)
    if ckpt is None:
        vae = AutoencoderKL.from_pretrained(work / "vae")
        start, wall, history = 0, 0.0, []
    else:
        vae = AutoencoderKL.from_pretrained(ckpt / "vae")
        extra = torch.load(ckpt / "trainer.pt", weights_only=True)
        start, wall, history = extra["step"], extra["wall_s"], extra["history"]
        logger.info("decoder: resuming from %s (step %d)", ckpt, start)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    vae.encoder.eval()
    vae.decoder.train()
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    if ckpt is not None:
        opt.load_state_dict(extra["optimizer"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, cfg.decoder_steps, warmup=20)
    )
    for _ in range(start):
        sched.step()
    val = heldout_renders(256)
    t0 = time.time() - wall
    bar = tqdm(
        range(start, cfg.decoder_steps),
        desc="decoder",
        mininterval=20,
        initial=start,
        total=cfg.decoder_steps,
    )
    for step in bar:
        x = to_model_range(decoder_batch(step, cfg))  # (B, 3, H, W)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()  # (B, 4, h, w), frozen encoder
        rec = vae.decode(z).sample  # (B, 3, H, W)
        l2 = F.mse_loss(rec, x)
        loss = (rec - x).abs().mean() + l2 + cfg.vae_edge_weight * edge_l1(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{10 * math.log10(4 / l2.item()):.1f}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.decoder_steps:
            vae.decoder.eval()
            val_psnr = vae_psnr(vae, val)
            vae.decoder.train()
            history.append({"step": done, "val_psnr": val_psnr, "loss": loss.item()})
            logger.info("decoder step %d: loss %.4f val_psnr=%.2f dB", done, loss.item(), val_psnr)
        if done % cfg.ckpt_every == 0 or done == cfg.decoder_steps:
            extra = {
                "step": done,
                "wall_s": time.time() - t0,
                "history": history,
                "optimizer": opt.state_dict(),
            }
            save_checkpoint(work / "decoder_ckpt", done, {"vae": vae, "trainer": extra})
    wall = time.time() - t0
    vae.eval().requires_grad_(False)
    fresh_psnr = vae_psnr(vae, heldout_renders(512, chunk=1))
    _atomic_save_dir(vae, final)
    state.update(
        decoder_done=True,
        decoder_wall_s=wall,
        decoder_history=history,
        vae_ft_psnr_heldout=fresh_psnr,
    )
    logger.info("decoder: done in %.0f s, held-out PSNR %.2f dB", wall, fresh_psnr)
    return vae


@torch.no_grad()
def latent_channel_stats(
    vae: Any, cfg: SDRecipeConfig, n: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (each (C,)) of posterior-mode latents of held-out renders."""
    images = heldout_renders(n, chunk=2, size=cfg.image_size)
    z = torch.cat(
        [
            vae.encode(to_model_range(images[i : i + 128])).latent_dist.mode()
            for i in range(0, n, 128)
        ]
    )  # (n, C, h, w)
    return z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))


@torch.no_grad()
def standardize_latents(vae: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Reparametrise the VAE in place so its latents are zero-mean, unit-std per channel.

    ``z' = (z - mean) / std`` is folded into ``quant_conv`` (posterior mean and log-variance) and
    undone in ``post_quant_conv``, so decode(encode(x)) is unchanged; ``scaling_factor`` becomes
    1. Stock SD pipelines only know a scalar scale; without this, the luminance-like channel
    (std ~4x the others) dominates the diffusion loss and colour is learned far more slowly.
    """
    c = len(mean)
    q_w, q_b = vae.quant_conv.weight, vae.quant_conv.bias  # (2C, 2C, 1, 1), (2C,)
    q_w[:c] /= std.view(c, 1, 1, 1)
    q_b[:c] = (q_b[:c] - mean) / std
    q_b[c:] -= 2.0 * torch.log(std)
    p_w, p_b = vae.post_quant_conv.weight, vae.post_quant_conv.bias  # (C, C, 1, 1), (C,)
    p_b += p_w[:, :, 0, 0] @ mean
    p_w *= std.view(1, c, 1, 1)
    vae.register_to_config(scaling_factor=1.0)


@torch.no_grad()
def latent_scaling_factor(vae: Any, cfg: SDRecipeConfig, n: int = 1024) -> float:
    """1 / std of posterior-mode latents of held-out renders (the SD `scaling_factor` recipe)."""
    z = []
    images = heldout_renders(n, chunk=2, size=cfg.image_size)
    for i in range(0, n, 128):
        z.append(vae.encode(to_model_range(images[i : i + 128])).latent_dist.mode())
    return float(1.0 / torch.cat(z).flatten().std())


# ----------------------------------------------------------------------------- phase 2: latents


def load_text_tower(clip_dir: Path) -> tuple[Any, Any]:
    """The frozen text tower (CLIPTextModel) and CLIPTokenizer of the `clip` checkpoint."""
    from transformers import CLIPTextModel, CLIPTokenizer

    if not (Path(clip_dir) / "config.json").exists():
        raise FileNotFoundError(
            f"clip_dir={clip_dir}: no CLIP checkpoint; train it first (`icg zoo train clip`)"
        )
    text_encoder = CLIPTextModel.from_pretrained(str(clip_dir)).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir))
    return text_encoder, tokenizer


def frozen_text_tower(work: Path, clip_dir: Path) -> tuple[Any, Any]:
    """The text tower of this run: copied once from `clip_dir` into ``work/text_tower``.

    The latent/prompt cache, the UNet and the shipped pipeline must all use the very same text
    tower, even if the `clip` folder is retrained while this recipe runs.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    copy = work / "text_tower"
    if not (copy / "config.json").exists():
        text_encoder, tokenizer = load_text_tower(clip_dir)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-text_tower-", dir=work))
        text_encoder.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if copy.exists():
            shutil.rmtree(copy)
        os.replace(tmp, copy)
        logger.info("text tower: copied from %s", clip_dir)
    text_encoder = CLIPTextModel.from_pretrained(str(copy)).eval().requires_grad_(False)
    return text_encoder, CLIPTokenizer.from_pretrained(str(copy))


@torch.no_grad()
def encode_prompts(text_encoder: Any, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Prompt embeddings exactly as ``StableDiffusionPipeline.encode_prompt`` makes them.

    Padded to ``tokenizer.model_max_length``; returns the last hidden state (N, L, D).
    """
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids  # (N, L)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = ids.ne(tokenizer.pad_token_id).long()
    return text_encoder(ids, attention_mask=mask)[0]  # (N, L, D)


def unet_data(
    work: Path, cfg: SDRecipeConfig, vae: Any, text_encoder: Any, tokenizer: Any
) -> dict[str, torch.Tensor]:
    """Phase 2: latents (x scaling_factor) and prompt embeddings of `num_latents` zoo renders.

    Chunks of 512 renders are cached one file each (atomic), so an interrupted cache resumes.
    Returns {"latents": (N, 4, 16, 16) float32, "text": (N, L, D) float16, "uncond": (L, D)}.
    """
    from icg.world.sampling import sample_covers

    final = work / "latents.pt"
    if final.exists():
        return torch.load(final, weights_only=True)
    chunk_dir = work / "latent_chunks"
    chunk = min(512, cfg.num_latents)
    n_chunks = math.ceil(cfg.num_latents / chunk)
    scale = vae.config.scaling_factor
    for c in tqdm(range(n_chunks), desc="latents", mininterval=20):
        file = chunk_dir / f"chunk-{c:04d}.pt"
        if file.exists():
            continue
        s = sample_covers(
            chunk,
            zoo_seed(LATENT_DATA_OFFSET + c),
            size=cfg.image_size,
            defect_rate=cfg.unet_defect_rate,
        )
        with torch.no_grad():
            z = vae.encode(to_model_range(s.images)).latent_dist.mode() * scale  # (B, 4, 16, 16)
        text = encode_prompts(text_encoder, tokenizer, prompts_for(s.titles)).half()  # (B, L, D)
        _atomic_torch_save({"latents": z, "text": text}, file)
    parts = [
        torch.load(chunk_dir / f"chunk-{c:04d}.pt", weights_only=True) for c in range(n_chunks)
    ]
    data = {
        "latents": torch.cat([p["latents"] for p in parts])[: cfg.num_latents],
        "text": torch.cat([p["text"] for p in parts])[: cfg.num_latents],
        "uncond": encode_prompts(text_encoder, tokenizer, [""])[0],
    }
    _atomic_torch_save(data, final)
    shutil.rmtree(chunk_dir, ignore_errors=True)
    logger.info(
        "latents: %s, mean %.3f std %.3f",
        tuple(data["latents"].shape),
        data["latents"].mean().item(),
        data["latents"].std().item(),
    )
    return data


# ----------------------------------------------------------------------------- phase 3: UNet


def unet_batch(
    step: int, seed: int, data: dict[str, torch.Tensor], cfg: SDRecipeConfig, num_timesteps: int
) -> dict[str, torch.Tensor]:
    """Indices, noise, timesteps and prompt dropout of UNet step `step`: a pure function of it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    n = len(data["latents"])
    idx = torch.randint(0, n, (cfg.unet_batch,), generator=g)
    latents = data["latents"][idx]  # (B, 4, h, w)
    text = data["text"][idx].float()  # (B, L, D)
    drop = torch.rand(cfg.unet_batch, generator=g) < cfg.cfg_drop
    text[drop] = data["uncond"].float()
    return {
        "latents": latents,
        "text": text,
        "noise": torch.randn(latents.shape, generator=g),
        "timesteps": torch.randint(0, num_timesteps, (cfg.unet_batch,), generator=g),
    }


def unet_loss(unet: Any, scheduler: Any, b: dict[str, torch.Tensor], gamma: float) -> torch.Tensor:
    """v-prediction MSE with min-SNR-gamma weights of one batch."""
    t = b["timesteps"]
    noisy = scheduler.add_noise(b["latents"], b["noise"], t)  # (B, 4, h, w)
    target = scheduler.get_velocity(b["latents"], b["noise"], t)  # (B, 4, h, w)
    pred = unet(noisy, t, encoder_hidden_states=b["text"]).sample  # (B, 4, h, w)
    alphas = scheduler.alphas_cumprod[t]
    weight = min_snr_weight(alphas / (1.0 - alphas), gamma)  # (B,)
    return (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """Exponential moving average with warm-up decay min(max_decay, (1 + step) / (10 + step))."""
    decay = min(max_decay, (1.0 + step) / (10.0 + step))
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1.0 - decay)


def train_unet(
    work: Path, cfg: SDRecipeConfig, state: _State, seed: int, data: dict[str, torch.Tensor]
) -> Any:
    """Phase 3: train the UNet on the cached latents; returns the EMA UNet."""
    import copy

    from diffusers import UNet2DConditionModel

    final = work / "unet"
    if final.exists() and state.get("unet_done"):
        logger.info("unet: done already (%s)", final)
        return UNet2DConditionModel.from_pretrained(final)
    scheduler = build_train_scheduler(cfg)
    ckpt = latest_checkpoint(work / "unet_ckpt")
    torch.manual_seed(seed)
    if ckpt is None:
        unet = build_unet(cfg, cross_attention_dim=data["text"].shape[-1])
        ema = copy.deepcopy(unet)
        start, wall, history = 0, 0.0, []
    else:
        unet = UNet2DConditionModel.from_pretrained(ckpt / "unet")
        ema = UNet2DConditionModel.from_pretrained(ckpt / "ema")
        extra = torch.load(ckpt / "trainer.pt", weights_only=True)
        start, wall, history = extra["step"], extra["wall_s"], extra["history"]
        logger.info("unet: resuming from %s (step %d)", ckpt, start)
    unet.train()
    ema.eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    if ckpt is not None:
        opt.load_state_dict(extra["optimizer"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, cfg.unet_steps, warmup=100, floor=0.1)
    )
    for _ in range(start):
        sched.step()
    n_params = sum(p.numel() for p in unet.parameters())
    logger.info("unet: %.2fM params, steps %d..%d", n_params / 1e6, start, cfg.unet_steps)
    t0 = time.time() - wall
    bar = tqdm(
        range(start, cfg.unet_steps),
        desc="unet",
        mininterval=20,
        initial=start,
        total=cfg.unet_steps,
    )
    running = None
    for step in bar:
        b = unet_batch(step, seed, data, cfg, scheduler.config.num_train_timesteps)
        loss = unet_loss(unet, scheduler, b, cfg.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, unet, step, cfg.ema_decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
        done = step + 1
        if done % 50 == 0:
            history.append((done, running))
            logger.info("unet step %d: loss %.4f", done, running)
        if done % cfg.ckpt_every == 0 or done == cfg.unet_steps:
            extra = {
                "step": done,
                "wall_s": time.time() - t0,
                "history": history,
                "optimizer": opt.state_dict(),
            }
            save_checkpoint(work / "unet_ckpt", done, {"unet": unet, "ema": ema, "trainer": extra})
    wall = time.time() - t0
    _atomic_save_dir(ema, final)
    state.update(unet_done=True, unet_wall_s=wall, unet_params=n_params, unet_history=history)
    logger.info("unet: done in %.0f s", wall)
    return ema


# ----------------------------------------------------------------------------- assemble, gates


def assemble(vae: Any, unet: Any, text_encoder: Any, tokenizer: Any, cfg: SDRecipeConfig) -> Any:
    """The StableDiffusionPipeline of the parts: DDIM sampler, no safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sample_scheduler(cfg),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def generate(
    pipe: Any,
    titles: list[str],
    *,
    steps: int = 25,
    guidance_scale: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> np.ndarray:
    """Covers for `titles` with the plain prompt; uint8 (N, H, W, 3).

    ``guidance_scale=None`` keeps the pipeline's default.
    """
    out = []
    kwargs = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    for i in range(0, len(titles), batch_size):
        g = torch.Generator().manual_seed(seed + i)
        images = pipe(
            prompts_for(titles[i : i + batch_size]),
            num_inference_steps=steps,
            generator=g,
            output_type="np",
            **kwargs,
        ).images  # (B, H, W, 3) float in [0, 1]
        out.append((images * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


THRESHOLDS = {"motif_acc": 0.70, "palette_acc": 0.70, "vae_psnr_db": 26.0}


def measure(
    path: str | Path,
    titles: list[str],
    motif: np.ndarray,
    palette: np.ndarray,
    images: np.ndarray,
    *,
    steps: int = 25,
    seed: int = 0,
) -> dict[str, float]:
    """Gate metrics of the pipeline at `path`.

    Args:
        titles: N titles; one cover is generated per title with ``"a cover for <title>"``.
        motif: (N,) true motif of each title's item.
        palette: (N,) true palette of each title's item.
        images: uint8 (M, 64, 64, 3) fresh covers for the VAE reconstruction PSNR.
    """
    from diffusers import StableDiffusionPipeline

    from icg.world.truth import read_attributes  # evaluation only

    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    covers = generate(pipe, titles, steps=steps, seed=seed)
    readout = read_attributes(covers)
    return {
        "motif_acc": float((np.asarray(readout.motif) == motif).mean()),
        "palette_acc": float((np.asarray(readout.palette) == palette).mean()),
        "vae_psnr_db": vae_psnr(pipe.vae, images),
        "n_titles": float(len(titles)),
        "n_psnr_images": float(len(images)),
    }


def evaluate(
    path: str | Path, world_dir: str | Path | None = None, limit: int | None = None
) -> dict[str, float]:
    """Gate metrics of the pipeline at `path`.

    Motif and palette accuracy: one cover per item title of `world_dir` (``"a cover for
    <title>"``, 25 DDIM steps, default guidance), read by the truth API and compared with
    ``truth/items.parquet``. VAE PSNR: reconstruction of fresh renders from the world seed range
    (platform defect rate 0.25); the PSNR of the world's own reference covers (defect rate 0.35
    by default) is reported beside it as ``vae_psnr_world_items_db``. With `world_dir` None, the
    titles of fresh renders stand in for a world's items.

    Args:
        path: a StableDiffusionPipeline folder.
        world_dir: a CoverWorld folder (``icg world generate``), or None.
        limit: at most this many items (default: all items; 512 fresh titles without a world).
    """
    from icg.zoo import evaldata

    fresh = evaldata.fresh_covers(limit or 512)
    if world_dir is None:
        return measure(path, fresh.titles, fresh.motif, fresh.palette, fresh.images)
    items = evaldata.world_items(Path(world_dir), limit=limit)
    metrics = measure(path, items.titles, items.motif, items.palette, fresh.images)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(Path(path) / "vae"))
    metrics["vae_psnr_world_items_db"] = vae_psnr(vae, items.images)
    return metrics


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """``python -m icg.zoo.recipes.sd --out DIR [--resume] [--seed S] [--phase P]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument(
        "--phase", choices=["vae", "decoder", "unet", "publish-latest", "all"], default="all"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = SDRecipeConfig(
        threads=args.threads or SDRecipeConfig.threads,
        unet_steps=args.unet_steps or SDRecipeConfig.unet_steps,
    )
    torch.set_num_threads(cfg.threads)
    work = default_work_dir(args.out)
    work.mkdir(parents=True, exist_ok=True)
    state = _State(work / "state.json")
    if args.phase == "vae":
        train_vae(work, cfg, state, args.seed)
    elif args.phase == "decoder":  # may run beside the UNet phase: it keeps the latent space
        finetune_decoder(work, cfg, state, args.seed)
    elif args.phase == "publish-latest":  # ship the newest UNet checkpoint of a running phase
        publish_latest_checkpoint(args.out, work, cfg)
    elif args.phase == "unet":  # latents + UNet only (needs the vae phase and the clip weights)
        text_encoder, tokenizer = frozen_text_tower(work, CLIP_WEIGHTS)
        vae = train_vae(work, cfg, state, args.seed).eval()
        t0 = time.time()
        data = unet_data(work, cfg, vae, text_encoder, tokenizer)
        if state.get("latents_wall_s") is None:
            state.update(latents_wall_s=time.time() - t0)
        train_unet(work, cfg, state, args.seed, data)
    else:
        train(args.out, resume=args.resume, seed=args.seed, config=cfg)


def default_work_dir(out: Path) -> Path:
    """Checkpoints and caches live outside the shipped folder: ``$ICG_CACHE/zoo-work/<name>``."""
    root = Path(os.environ.get("ICG_CACHE", Path.home() / ".cache" / "icg"))
    return root / "zoo-work" / Path(out).resolve().name


def train(
    out: Path,
    *,
    resume: bool = False,
    seed: int = 0,
    config: SDRecipeConfig | None = None,
    clip_dir: Path | None = None,
    work_dir: Path | None = None,
) -> None:
    """Train coverworld-tiny `sd` into `out`: VAE -> latents -> UNet -> decoder ft -> gates.

    Args:
        out: the shipped folder (``StableDiffusionPipeline.save_pretrained`` + README.md +
            gates.json).
        resume: continue from the work folder's checkpoints; otherwise start from scratch.
        seed: torch seed (initialisation, noise, batches); the data seeds are fixed zoo seeds.
        config: recipe configuration (defaults: the shipped model).
        clip_dir: the `clip` checkpoint whose text tower and tokenizer are used.
        work_dir: checkpoints and caches (default `default_work_dir(out)`).
    """

    cfg = config or SDRecipeConfig()
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    if not resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    state = _State(work / "state.json")
    state.update(config=asdict(cfg), seed=seed)

    vae = train_vae(work, cfg, state, seed).eval()
    text_encoder, tokenizer = frozen_text_tower(work, Path(clip_dir) if clip_dir else CLIP_WEIGHTS)
    t0 = time.time()
    data = unet_data(work, cfg, vae, text_encoder, tokenizer)
    if state.get("latents_wall_s") is None:
        state.update(latents_wall_s=time.time() - t0)
    unet = train_unet(work, cfg, state, seed, data).eval()
    del data
    vae = finetune_decoder(work, cfg, state, seed).eval()
    publish(out, cfg, state, vae, unet, text_encoder, tokenizer)


def publish(
    out: Path,
    cfg: SDRecipeConfig,
    state: _State,
    vae: Any,
    unet: Any,
    text_encoder: Any,
    tokenizer: Any,
) -> dict[str, float]:
    """Save the pipeline into `out` (staged, then renamed), measure the gates, write the card."""
    from icg.zoo import evaldata
    from icg.zoo.recipes import _base

    out = Path(out)
    t0 = time.time()
    pipe = assemble(vae, unet, text_encoder, tokenizer, cfg)
    staged = out.with_name(f".{out.name}.publish")
    with _base.atomic_dir(staged) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
    gate_set = evaldata.fresh_covers(cfg.gate_items)
    metrics = measure(staged, gate_set.titles, gate_set.motif, gate_set.palette, gate_set.images)
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
        "vae": sum(p.numel() for p in vae.parameters()),
        "unet": sum(p.numel() for p in unet.parameters()),
        "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
    }
    write_report(out, cfg, metrics, wall, params, gate_set.source, state)
    logger.info("sd: published %s, gates %s", out, metrics)
    return metrics


def publish_latest_checkpoint(out: Path, work: Path, cfg: SDRecipeConfig) -> dict[str, float]:
    """Publish the EMA UNet of the newest UNet checkpoint (a run still in progress).

    The UNet step it was taken at is recorded in the card and in ``gates.json``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    state = _State(work / "state.json")
    ckpt = latest_checkpoint(work / "unet_ckpt")
    if ckpt is None:
        raise FileNotFoundError(f"work={work}: no UNet checkpoint to publish")
    extra = torch.load(ckpt / "trainer.pt", weights_only=True)
    state.update(unet_wall_s=extra["wall_s"], published_unet_step=extra["step"])
    unet = UNet2DConditionModel.from_pretrained(ckpt / "ema").eval()
    vae = AutoencoderKL.from_pretrained(work / "vae_ft").eval()
    text_encoder, tokenizer = frozen_text_tower(work, CLIP_WEIGHTS)
    return publish(out, cfg, state, vae, unet, text_encoder, tokenizer)


def write_report(
    out: Path,
    cfg: SDRecipeConfig,
    metrics: dict[str, float],
    wall: dict[str, float],
    params: dict[str, int],
    gate_data: str,
    state: _State | None = None,
) -> None:
    """Write ``gates.json`` and the model card README.md of the shipped folder."""
    from icg.zoo.recipes import _base

    gated = {k: v for k, v in metrics.items() if k in THRESHOLDS}
    _base.write_gates(
        out,
        _base.gate_record(
            "sd",
            metrics,
            THRESHOLDS,
            sum(params.values()),
            wall["total_s"],
            gate_data,
            parameters_by_part=params,
            wall_time_by_phase_s={k: round(v, 1) for k, v in wall.items()},
            protocol="prompt 'a cover for <title>', DDIM 25 steps, pipeline default guidance "
            "(7.5), read by icg.world.truth.read_attributes; PSNR: VAE encode(mode)/decode of "
            "the same fresh covers, mean per image",
            vae_psnr_heldout_zoo_db=(
                state.get("vae_ft_psnr_heldout", state.get("vae_psnr_heldout")) if state else None
            ),
            vae_scaling_factor=state.get("vae_scaling_factor") if state else None,
            unet_steps_done=state.get("published_unet_step", cfg.unet_steps)
            if state
            else cfg.unet_steps,
        ),
    )
    _base.write_card(
        out,
        name="sd",
        summary=(
            "A tiny Stable-Diffusion-format pipeline for 64x64 CoverWorld covers: an AutoencoderKL "
            f"(64px <-> {cfg.latent_size}x{cfg.latent_size}x{cfg.latent_channels} latents), a "
            "UNet2DConditionModel (v-prediction, cosine schedule, cross-attention on the 64-wide "
            "text tower of coverworld-tiny `clip`), the `clip` tokenizer and a DDIM scheduler "
            "(trailing spacing). No safety checker: it draws geometric covers only."
            + (
                f"\n\nNotes on this run: {state.get('notes')}"
                if state and state.get("notes")
                else ""
            )
        ),
        loading=(
            "from diffusers import StableDiffusionPipeline\n"
            "pipe = StableDiffusionPipeline.from_pretrained(PATH)\n"
            'image = pipe("a cover for The Crimson Orb", num_inference_steps=25).images[0]'
        ),
        data=(
            "CoverWorld renders from the zoo seed range only (`icg.world.seeds.zoo_seed`): the "
            f"VAE sees a fresh batch every step ({cfg.vae_steps - cfg.vae_full_steps} steps of "
            f"{cfg.vae_batch} random {cfg.vae_crop}px crops, then {cfg.vae_full_steps} steps of "
            f"{cfg.vae_full_batch} whole covers, platform defect rate 0.25); the UNet trains on "
            f"{cfg.num_latents} cached latents of renders with defect rate {cfg.unet_defect_rate} "
            "and their titles as prompts `a cover for <title>` (10% dropped to '' for "
            "classifier-free guidance)."
        ),
        recipe=(
            "VAE: L1 + L2 + edge-L1 + small KL, then scaling_factor = 1/std of latents; UNet: "
            f"v-prediction, min-SNR-{cfg.min_snr_gamma:g} weights, AdamW, EMA weights shipped; "
            f"wall time per phase: {', '.join(f'{k} {v / 60:.1f} min' for k, v in wall.items())}"
        ),
        config={k: v for k, v in asdict(cfg).items() if k != "extra"},
        parameters=sum(params.values()),
        gates=gated,
        thresholds=THRESHOLDS,
        gate_data=gate_data,
        wall_time_s=wall["total_s"],
    )


if __name__ == "__main__":
    main()
