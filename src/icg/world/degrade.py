"""What generated covers look like next to crisp renders: blur, JPEG, noise, resampling.

The truth must read a softened or compressed cover as a person would. These degradations are
used twice: as random augmentations while the oracle trains (`random_degradation`), and as the
fixed, named set of its robustness report (`REPORT_DEGRADATIONS`, `icg world evaluate-oracle`).
Sizes are in pixels of a 64 px cover; larger images are scaled to match.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Degradation = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> uint8 (N, H, W, 3)


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with `sigma` pixels at 64 px (reflect padding)."""
    if sigma <= 0:
        return images
    sigma = sigma * images.shape[1] / 64
    radius = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = _to_float(images)  # (N, 3, H, W)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return _to_uint8(x)


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """JPEG encode and decode each image at `quality` (Pillow, 4:2:0 chroma subsampling)."""
    out = np.empty_like(images)
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def gaussian_noise(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Additive Gaussian noise of `std` (in [0, 1] units), seeded."""
    rng = np.random.default_rng(seed)
    noisy = images.astype(np.float32) / 255.0 + rng.normal(0.0, std, images.shape)
    return (np.clip(noisy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def resample(images: np.ndarray, factor: float) -> np.ndarray:
    """Downsample by `factor` (area), then back up to the original size (bilinear)."""
    h, w = images.shape[1:3]
    x = _to_float(images)
    small = F.interpolate(
        x, size=(max(4, round(h * factor)), max(4, round(w * factor))), mode="area"
    )
    return _to_uint8(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False))


# The robustness report's degradations, mildest first within each family.
REPORT_DEGRADATIONS: dict[str, Degradation] = {
    "crisp": lambda im: im,
    "blur-0.5px": lambda im: gaussian_blur(im, 0.5),
    "blur-1px": lambda im: gaussian_blur(im, 1.0),
    "jpeg-75": lambda im: jpeg(im, 75),
    "jpeg-50": lambda im: jpeg(im, 50),
    "noise-0.03": lambda im: gaussian_noise(im, 0.03),
    "noise-0.06": lambda im: gaussian_noise(im, 0.06),
    "resample-0.75": lambda im: resample(im, 0.75),
    "resample-0.5": lambda im: resample(im, 0.5),
}


def random_degradation(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random degradation of a batch (an augmentation of oracle training).

    With probability 0.3 the batch stays crisp; otherwise one or two of blur (sigma up to
    1.3 px), JPEG (quality 35..95), noise (std up to 0.08) and resampling (factor 0.4..0.9)
    are applied in random order, with random strengths.
    """
    if rng.random() < 0.3:
        return images
    ops: list[Degradation] = [
        lambda im: gaussian_blur(im, float(rng.uniform(0.3, 1.3))),
        lambda im: jpeg(im, int(rng.integers(35, 96))),
        lambda im: gaussian_noise(im, float(rng.uniform(0.01, 0.08)), int(rng.integers(2**31))),
        lambda im: resample(im, float(rng.uniform(0.4, 0.9))),
    ]
    for k in rng.choice(len(ops), size=int(rng.integers(1, 3)), replace=False):
        images = ops[int(k)](images)
    return images


def vae_roundtrip(vae_dir: Path) -> Degradation:
    """A degradation that encodes (posterior mode) and decodes through an AutoencoderKL folder."""
    # import cost: diffusers takes seconds to import; only this degradation needs it
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_dir)).eval()
    return lambda images: reconstruct(vae, images)


@torch.no_grad()
def reconstruct(vae: Any, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Encode (posterior mode) and decode uint8 (N, H, W, 3) images; returns uint8 (N, H, W, 3)."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).permute(0, 3, 1, 2)
        rec = vae.decode(vae.encode(x.float() / 127.5 - 1.0).latent_dist.mode()).sample
        out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out).numpy()
