"""CoverWorld's attribute space.

Content attributes (motif, palette family) are implied by an item's title. Style attributes are
free: that is where taste lives. Every style dimension has ordered levels; a style is a vector in
[0, 1]^S (level index / (levels - 1)), so tastes and pixel read-outs live in the same space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MOTIFS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "star",
    "crescent",
)

# Palette families and their hue in degrees.
PALETTES: tuple[str, ...] = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")
PALETTE_HUES: tuple[float, ...] = (0.0, 30.0, 58.0, 120.0, 178.0, 222.0, 275.0, 322.0)

STYLE_LEVELS: dict[str, tuple[str, ...]] = {
    "brightness": ("dark", "mid", "light"),
    "saturation": ("muted", "normal", "vivid"),
    "scale": ("small", "medium", "large"),
    "layout": ("center", "left", "top"),
    "frame": ("none", "thin", "thick"),
    "texture": ("flat", "stripes", "dots"),
}
STYLE_DIMS: tuple[str, ...] = tuple(STYLE_LEVELS)
NUM_STYLE = len(STYLE_DIMS)

# Style dimensions that are ordinal (a distance between levels is meaningful). The others are
# categorical; their [0, 1] coordinate is still used for taste, which is what users see.
ORDINAL_DIMS: tuple[str, ...] = ("brightness", "saturation", "scale", "frame")


def style_vector(levels: dict[str, int] | np.ndarray) -> np.ndarray:
    """Map level indices (dict or array of shape (S,)) to the style vector in [0, 1]^S."""
    if isinstance(levels, dict):
        idx = np.array([levels[d] for d in STYLE_DIMS], dtype=np.float32)
    else:
        idx = np.asarray(levels, dtype=np.float32)
    sizes = np.array([len(STYLE_LEVELS[d]) - 1 for d in STYLE_DIMS], dtype=np.float32)
    return idx / sizes


def style_words(levels: np.ndarray) -> list[str]:
    """Human words for a level-index vector, e.g. ["dark", "vivid", "large", ...]."""
    return [STYLE_LEVELS[d][int(i)] for d, i in zip(STYLE_DIMS, levels, strict=True)]


@dataclass(frozen=True)
class Defects:
    """Realistic flaws of platform covers; all zero for a clean render.

    Args:
        blur: box-blur radius in pixels at 64px (scaled with size).
        noise: standard deviation of additive Gaussian noise, in [0, 1] intensity units.
        fade: blend factor towards flat grey (contrast loss), in [0, 1].
        shift: motif displacement as a fraction of the canvas (a sloppy crop).
    """

    blur: float = 0.0
    noise: float = 0.0
    fade: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class CoverSpec:
    """Everything the renderer needs to draw one cover.

    Args:
        motif: index into MOTIFS.
        palette: index into PALETTES.
        style: level index per style dimension, shape (S,), ints.
        defects: flaws to apply after drawing.
        seed: fixes texture phase and noise.
    """

    motif: int
    palette: int
    style: tuple[int, ...]
    defects: Defects = field(default_factory=Defects)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.motif < len(MOTIFS):
            raise ValueError(f"motif={self.motif}: expected 0..{len(MOTIFS) - 1}")
        if not 0 <= self.palette < len(PALETTES):
            raise ValueError(f"palette={self.palette}: expected 0..{len(PALETTES) - 1}")
        if len(self.style) != NUM_STYLE:
            raise ValueError(f"style has {len(self.style)} levels, expected {NUM_STYLE}")
        for dim, level in zip(STYLE_DIMS, self.style, strict=True):
            if not 0 <= level < len(STYLE_LEVELS[dim]):
                raise ValueError(f"style {dim}={level}: expected 0..{len(STYLE_LEVELS[dim]) - 1}")
