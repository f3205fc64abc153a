"""Draw CoverWorld covers as RGB arrays: fast, vectorised numpy, any size up to 512."""

from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np

from icg.world.attributes import MOTIFS, PALETTE_HUES, STYLE_DIMS, CoverSpec

MAX_SIZE = 512
BG_VALUE = (0.16, 0.52, 0.9)  # background value per brightness level
SAT_MULT = (0.3, 0.62, 0.95)  # saturation per saturation level
MOTIF_RADIUS = (0.13, 0.19, 0.25)  # fraction of the canvas, per scale level
LAYOUT_CENTER = ((0.5, 0.5), (0.34, 0.5), (0.5, 0.34))  # (x, y) per layout level
FRAME_WIDTH = (0.0, 0.035, 0.075)  # fraction of the canvas, per frame level
_D = {d: i for i, d in enumerate(STYLE_DIMS)}


def hsv_to_rgb(h_deg: float, s: float, v: float) -> np.ndarray:
    """One colour, hue in degrees, returned as float32 RGB in [0, 1]."""
    return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v), dtype=np.float32)


@lru_cache(maxsize=8)
def _grid(size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * supersample
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.meshgrid(coords, coords)  # x (H, W), y (H, W)


def motif_mask(motif: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a motif in normalised coordinates (unit radius, y pointing down)."""
    name = MOTIFS[motif]
    r2 = u * u + v * v
    if name == "circle":
        return r2 <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if name == "triangle":
        return (v <= 0.75) & (np.abs(u) <= 0.98 * (v + 1.0) / 1.75)
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | (
            (np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)
        )
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if name == "star":
        theta = np.arctan2(v, u) + np.pi / 2
        return np.sqrt(r2) <= 0.42 + 0.58 * np.abs(np.cos(2.5 * theta)) ** 3
    if name == "crescent":
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + (v + 0.12) ** 2 > 0.78**2)
    raise ValueError(f"unknown motif {motif}")


def _box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur of an (H, W, C) array with edge padding."""
    if radius <= 0:
        return img
    k = 2 * radius + 1
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis, dtype=np.float32)
        hi = np.take(c, np.arange(k, c.shape[axis]), axis=axis)
        lo = np.take(c, np.arange(0, c.shape[axis] - k), axis=axis)
        img = (hi - lo) / k
    return img


def render(spec: CoverSpec, size: int = 64) -> np.ndarray:
    """Render one cover.

    Args:
        spec: content, style and defects.
        size: edge length in pixels, 8..512.

    Returns:
        uint8 array of shape (size, size, 3).
    """
    if not 8 <= size <= MAX_SIZE:
        raise ValueError(f"size={size}: expected 8..{MAX_SIZE}")
    st = spec.style
    hue = PALETTE_HUES[spec.palette]
    sat = SAT_MULT[st[_D["saturation"]]]
    bg_v = BG_VALUE[st[_D["brightness"]]]
    x, y = _grid(size, 1)

    # background: value map with texture, tinted with the palette hue
    value = np.full((size, size), bg_v, dtype=np.float32)
    texture = st[_D["texture"]]
    phase = (spec.seed % 97) / 97.0
    if texture == 1:  # diagonal stripes
        value = value * (1.0 + 0.22 * np.sin(2 * np.pi * (6.0 * (x + y) + phase)))
    elif texture == 2:  # soft dots
        dots = np.cos(2 * np.pi * (7.0 * x + phase)) * np.cos(2 * np.pi * (7.0 * y + phase))
        value = value * (1.0 + 0.3 * np.clip(dots, 0.0, 1.0) * np.sign(0.5 - bg_v + 1e-3))
    bg_rgb = hsv_to_rgb(hue, 0.45 * sat, 1.0)
    img = np.clip(value, 0.0, 1.0)[..., None] * bg_rgb  # (H, W, 3)

    # motif: anti-aliased by 2x supersampling of its mask
    cx, cy = LAYOUT_CENTER[st[_D["layout"]]]
    cx, cy = cx + spec.defects.shift[0], cy + spec.defects.shift[1]
    radius = MOTIF_RADIUS[st[_D["scale"]]]
    xs, ys = _grid(size, 2)
    mask = motif_mask(spec.motif, (xs - cx) / radius, (ys - cy) / radius).astype(np.float32)
    alpha = mask.reshape(size, 2, size, 2).mean(axis=(1, 3))[..., None]  # (H, W, 1)
    motif_v = 0.95 if bg_v < 0.7 else 0.5
    if bg_v > 0.3 and bg_v < 0.7:
        motif_v = 1.0
    motif_rgb = hsv_to_rgb(hue, min(1.0, sat * 1.05 + 0.05), motif_v)
    img = img * (1.0 - alpha) + motif_rgb * alpha

    # frame
    width = FRAME_WIDTH[st[_D["frame"]]]
    if width > 0:
        edge = np.minimum(np.minimum(x, 1 - x), np.minimum(y, 1 - y))
        frame_v = 0.96 if bg_v < 0.7 else 0.08
        img = np.where((edge < width)[..., None], np.float32(frame_v), img)

    # defects
    d = spec.defects
    if d.blur > 0:
        img = _box_blur(img, int(round(d.blur * size / 64)))
    if d.fade > 0:
        img = img * (1.0 - d.fade) + 0.5 * d.fade
    if d.noise > 0:
        rng = np.random.default_rng(spec.seed)
        img = img + rng.normal(0.0, d.noise, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
