"""Reading attributes and quality off pixels: analytic colour and brightness measures plus the
oracle classifier. Works on ANY image (renders, platform covers, generated covers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from icg.world.attributes import NUM_STYLE, PALETTE_HUES, STYLE_DIMS, STYLE_LEVELS
from icg.world.oracle import HEAD_DIMS, OracleNet, load_oracle, to_input
from icg.world.render import BG_VALUE, SAT_MULT, _box_blur

PALETTE_SIGMA_DEG = 14.0
# Aesthetic appeal of each style level (composition taste shared by everyone).
STYLE_APPEAL = {
    "scale": (0.3, 1.0, 0.8),
    "layout": (1.0, 0.65, 0.7),
    "frame": (0.55, 1.0, 0.75),
    "texture": (0.85, 0.6, 0.7),
}


@dataclass
class Readout:
    """Attributes read off N images.

    Args:
        motif_probs: (N, 8) oracle motif probabilities.
        palette_probs: (N, 8) from the saturation-weighted mean hue.
        style: (N, S) style coordinates in [0, 1] (analytic brightness and saturation; oracle
            expectation for the other dimensions).
        style_probs: head name -> (N, levels) oracle probabilities.
        sharpness, noise, contrast: (N,) raw quality measures.
    """

    motif_probs: np.ndarray
    palette_probs: np.ndarray
    style: np.ndarray
    style_probs: dict[str, np.ndarray]
    sharpness: np.ndarray
    noise: np.ndarray
    contrast: np.ndarray

    @property
    def motif(self) -> np.ndarray:
        return self.motif_probs.argmax(-1)

    @property
    def palette(self) -> np.ndarray:
        return self.palette_probs.argmax(-1)


@lru_cache(maxsize=1)
def _oracle():
    return load_oracle()


def _as_uint8(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected (N, H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images: expected uint8, got {images.dtype}")
    return images


def _hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float (..., 3) RGB in [0, 1] -> hue (degrees), saturation, value."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    c = v - x.min(-1)
    s = np.where(v > 1e-6, c / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(c, 1e-6)
    h = np.where(
        v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    return h * 60.0, s, v


def _smooth(x: np.ndarray) -> np.ndarray:
    """5x5 mean of each image of (N, H, W, C) float."""
    n, h, w, c = x.shape
    flat = np.moveaxis(x, 0, 2).reshape(h, w, n * c)  # (H, W, N * C)
    return np.moveaxis(_box_blur(flat, 2).reshape(h, w, n, c), 2, 0)


def palette_probs(x: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) float -> (N, 8): a Gaussian on the circular distance between the
    saturation-weighted mean hue of the cover and each palette's hue."""
    h, s, v = _hsv(x)
    w = (s * v) ** 2  # (N, H, W): saturated, bright pixels speak for the palette
    rad = np.deg2rad(h)
    mean = np.rad2deg(np.arctan2((w * np.sin(rad)).sum((1, 2)), (w * np.cos(rad)).sum((1, 2))))
    diff = (mean[:, None] - np.array(PALETTE_HUES)[None] + 180.0) % 360.0 - 180.0  # (N, 8)
    logits = -0.5 * (diff / PALETTE_SIGMA_DEG) ** 2
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    grey = w.sum((1, 2)) < 1e-3 * w[0].size  # no colour at all: no palette
    p[grey] = 1.0 / len(PALETTE_HUES)
    return p


def quality(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, H, W, 3) float -> sharpness, noise, contrast, each (N,); measured at 64px."""
    lum = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (N, H, W)
    lo, hi = np.percentile(lum, [2, 98], axis=(1, 2))
    contrast = hi - lo
    gx = np.abs(np.diff(lum, axis=2)).reshape(len(x), -1)
    gy = np.abs(np.diff(lum, axis=1)).reshape(len(x), -1)
    sharp = np.percentile(np.concatenate([gx, gy], 1), 99.5, axis=1) / (contrast + 1e-3)
    hp = lum - _box_blur(np.moveaxis(lum, 0, -1), 1).transpose(2, 0, 1)
    noise = np.median(np.abs(hp).reshape(len(x), -1), axis=1) * 2.2
    return sharp, noise, contrast


def read(images: np.ndarray, batch_size: int = 512, net: OracleNet | None = None) -> Readout:
    """Read attributes and quality measures off uint8 images (N, H, W, 3) of any size.

    `net` is the oracle to read with (default: the shipped one).
    """
    images = _as_uint8(images)
    x = to_input(images)  # (N, 3, 64, 64): every measure is taken at 64px
    x64 = x.permute(0, 2, 3, 1).numpy()  # (N, 64, 64, 3)
    net = net or _oracle()
    with torch.no_grad():
        outs = [net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    probs = {k: torch.cat([o[k] for o in outs]).softmax(-1).numpy() for k in outs[0]}

    inner = x64[:, 6:-6, 6:-6]  # skip the frame
    _, s, v = _hsv(_smooth(inner))  # pixel noise is not colour
    bg_v = np.median(v.reshape(len(x), -1), axis=1)
    bg_s = np.median(s.reshape(len(x), -1), axis=1)
    style = np.zeros((len(x), NUM_STYLE), dtype=np.float32)
    style[:, STYLE_DIMS.index("brightness")] = (bg_v - BG_VALUE[0]) / (BG_VALUE[2] - BG_VALUE[0])
    sat = bg_s / 0.45
    style[:, STYLE_DIMS.index("saturation")] = (sat - SAT_MULT[0]) / (SAT_MULT[2] - SAT_MULT[0])
    for d in HEAD_DIMS:
        p = probs[d]
        style[:, STYLE_DIMS.index(d)] = p @ np.linspace(0.0, 1.0, p.shape[1])
    style = np.clip(style, 0.0, 1.0)
    sharp, noise, contrast = quality(x64)
    return Readout(
        motif_probs=probs["motif"],
        palette_probs=palette_probs(x64),
        style=style,
        style_probs={d: probs[d] for d in HEAD_DIMS},
        sharpness=sharp,
        noise=noise,
        contrast=contrast,
    )


def style_levels(r: Readout) -> np.ndarray:
    """The style level index per dimension (N, S): the oracle's most likely level for the
    dimensions it reads, the nearest level of the analytic coordinate for the others."""
    levels = np.zeros(r.style.shape, dtype=np.int64)
    for i, d in enumerate(STYLE_DIMS):
        if d in r.style_probs:
            levels[:, i] = r.style_probs[d].argmax(-1)
        else:
            top = len(STYLE_LEVELS[d]) - 1
            levels[:, i] = np.rint(r.style[:, i] * top).astype(np.int64)
    return levels


def style_accuracy(levels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Share of covers whose read level (`style_levels`) equals the true one, per dimension."""
    return {d: float((levels[:, i] == truth[:, i]).mean()) for i, d in enumerate(STYLE_DIMS)}


def aesthetic_from_readout(r: Readout) -> np.ndarray:
    """True aesthetic in [0, 1]: sharp, clean, contrasted, well composed."""
    sharp = np.clip((r.sharpness - 0.2) / 0.6, 0.0, 1.0)
    clean = np.clip(1.0 - (r.noise - 0.015) / 0.06, 0.0, 1.0)
    contrast = np.clip((r.contrast - 0.15) / 0.45, 0.0, 1.0)
    composition = np.mean(
        [r.style_probs[d] @ np.array(STYLE_APPEAL[d]) for d in STYLE_APPEAL], axis=0
    )
    return 0.3 * sharp + 0.2 * clean + 0.2 * contrast + 0.3 * composition


def style_appeal(levels: np.ndarray) -> np.ndarray:
    """Composition appeal of style level indices (..., S): the analytic twin of the above."""
    out = np.zeros(levels.shape[:-1])
    for d, appeal in STYLE_APPEAL.items():
        out = out + np.asarray(appeal)[levels[..., STYLE_DIMS.index(d)]]
    return out / len(STYLE_APPEAL)


def concat_readouts(parts: list[Readout]) -> Readout:
    """One readout of several, in order (the readouts of consecutive chunks of images)."""
    return Readout(
        motif_probs=np.concatenate([r.motif_probs for r in parts]),
        palette_probs=np.concatenate([r.palette_probs for r in parts]),
        style=np.concatenate([r.style for r in parts]),
        style_probs={
            d: np.concatenate([r.style_probs[d] for r in parts]) for d in parts[0].style_probs
        },
        sharpness=np.concatenate([r.sharpness for r in parts]),
        noise=np.concatenate([r.noise for r in parts]),
        contrast=np.concatenate([r.contrast for r in parts]),
    )
