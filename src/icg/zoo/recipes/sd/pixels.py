"""Pixel-space helpers of the `sd` recipe: model range, edge loss, reconstruction PSNR."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from icg.world.degrade import reconstruct
from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo.recipes.sd.config import HELDOUT_OFFSET


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


def chroma(images: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """The colour of ``(N, 3, H, W)`` images without their lightness: the Cb, Cr channels of
    YCbCr (ITU-R BT.601) of the ``pool`` x ``pool`` means, ``(N, 2, H/pool, W/pool)``."""
    r, g, b = torch.nn.functional.avg_pool2d(images, pool).unbind(1)
    return torch.stack([-0.1687 * r - 0.3313 * g + 0.5 * b, 0.5 * r - 0.4187 * g - 0.0813 * b], 1)


def chroma_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the local colours (`chroma`) of two image batches. Muted colours have little
    chroma, so an RGB loss hardly sees a muted green decoded as lavender; this term does."""
    return (chroma(a) - chroma(b)).abs().mean()


def vae_psnr(vae: Any, images: np.ndarray) -> float:
    """Mean per-image reconstruction PSNR (dB) of uint8 (N, H, W, 3) images."""
    return float(psnr(images, reconstruct(vae, images)).mean())


def heldout_renders(n: int, chunk: int = 0, size: int = 64) -> np.ndarray:
    """Zoo renders no recipe phase trains on (default defect rate, like platform covers)."""

    return sample_covers(n, zoo_seed(HELDOUT_OFFSET + chunk), size=size).images
