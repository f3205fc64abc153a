"""Random covers: the style and defect distributions of the platform, and training samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icg.world.attributes import (
    MOTIFS,
    NUM_STYLE,
    PALETTES,
    STYLE_DIMS,
    STYLE_LEVELS,
    CoverSpec,
    Defects,
)
from icg.world.render import render
from icg.world.titles import make_title


def random_style(rng: np.random.Generator) -> tuple[int, ...]:
    """Uniform level per style dimension."""
    return tuple(int(rng.integers(len(STYLE_LEVELS[d]))) for d in STYLE_DIMS)


def random_defects(rng: np.random.Generator, rate: float) -> Defects:
    """Each flaw independently present with probability `rate`, with a random strength."""
    blur = float(rng.choice([1.0, 2.0])) if rng.random() < rate else 0.0
    noise = float(rng.uniform(0.03, 0.09)) if rng.random() < rate else 0.0
    fade = float(rng.uniform(0.25, 0.55)) if rng.random() < rate else 0.0
    shift = (
        (float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.12, 0.12)))
        if rng.random() < rate
        else (0.0, 0.0)
    )
    return Defects(blur=blur, noise=noise, fade=fade, shift=shift)


def random_spec(
    rng: np.random.Generator,
    motif: int | None = None,
    palette: int | None = None,
    defect_rate: float = 0.0,
) -> CoverSpec:
    """A cover with the given (or random) content, random style and optional defects."""
    return CoverSpec(
        motif=int(rng.integers(len(MOTIFS))) if motif is None else motif,
        palette=int(rng.integers(len(PALETTES))) if palette is None else palette,
        style=random_style(rng),
        defects=random_defects(rng, defect_rate),
        seed=int(rng.integers(2**31)),
    )


@dataclass
class CoverSample:
    """A batch of rendered covers with their known attributes.

    Args:
        images: uint8 (N, H, W, 3).
        motif: (N,) motif indices.
        palette: (N,) palette indices.
        style: (N, S) style level indices.
        titles: N titles written for the content.
        specs: the render specs.
    """

    images: np.ndarray
    motif: np.ndarray
    palette: np.ndarray
    style: np.ndarray
    titles: list[str]
    specs: list[CoverSpec]


def sample_covers(n: int, seed: int, size: int = 64, defect_rate: float = 0.25) -> CoverSample:
    """Render `n` random covers with titles: the training material of coverworld-tiny.

    Seeds are the caller's contract: zoo recipes, the oracle and evaluation worlds draw from
    disjoint seed ranges (see `icg.world.seeds`).
    """
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng, defect_rate=defect_rate) for _ in range(n)]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, spec in enumerate(specs):
        images[i] = render(spec, size)
    return CoverSample(
        images=images,
        motif=np.array([s.motif for s in specs]),
        palette=np.array([s.palette for s in specs]),
        style=np.array([s.style for s in specs], dtype=np.int64).reshape(n, NUM_STYLE),
        titles=[make_title(s.motif, s.palette, rng) for s in specs],
        specs=specs,
    )
