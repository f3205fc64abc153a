"""Evaluation material for the zoo gates: a CoverWorld folder, or fresh renders made in code.

Training never calls this module; it reads `truth/`, which only gates may do. Fresh renders
come from the WORLD seed range (`icg.world.seeds`), which no recipe trains on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from icg.world.attributes import NUM_STYLE, STYLE_DIMS
from icg.world.sampling import sample_covers
from icg.world.seeds import world_seed

# Offset into the world range for gate renders made in code (far from CLI-made worlds).
GATE_SEED_OFFSET = 9_000_000


@dataclass
class GateSet:
    """Images with their true content (and titles, when the images are items' covers).

    Args:
        images: uint8 (N, H, W, 3).
        motif: (N,) true motif indices.
        palette: (N,) true palette indices.
        titles: N titles (the item's title for item covers).
        style: (N, S) style level indices, or None when unknown.
        source: a short description for cards and reports.
        defects: (N, 3) 0/1 flags (blurred, noisy, faded), or None when unknown.
    """

    images: np.ndarray
    motif: np.ndarray
    palette: np.ndarray
    titles: list[str]
    style: np.ndarray | None
    source: str
    defects: np.ndarray | None = None


def fresh_covers(n: int, k: int = 0, defect_rate: float = 0.25) -> GateSet:
    """`n` fresh renders from world seed `GATE_SEED_OFFSET + k`, with titles and style."""
    seed = world_seed(GATE_SEED_OFFSET + k)
    s = sample_covers(n, seed=seed, defect_rate=defect_rate)
    flags = np.array(
        [[d.blur > 0, d.noise > 0, d.fade > 0] for d in (spec.defects for spec in s.specs)]
    ).astype(np.int64)
    return GateSet(
        s.images, s.motif, s.palette, s.titles, s.style, f"{n} fresh renders (seed {seed})", flags
    )


def _load_images(root: Path, rel_paths: list[str]) -> np.ndarray:

    out = []
    for rel in rel_paths:
        with Image.open(root / rel) as im:
            out.append(np.asarray(im.convert("RGB").resize((64, 64), Image.BICUBIC)))
    return np.stack(out).astype(np.uint8)


def _path_column(columns: list[str]) -> str:
    for name in ("cover", "path", "image", "file"):
        if name in columns:
            return name
    raise ValueError(f"no image path column in {columns}; expected one of cover/path/image")


def world_covers(world: Path, limit: int | None = None) -> GateSet:
    """All (or the first `limit`) covers of `world/truth/covers.parquet` with their truth."""

    world = Path(world)
    table = pd.read_parquet(world / "truth" / "covers.parquet")
    if limit is not None:
        table = table.iloc[:limit]
    col = _path_column(list(table.columns))
    style = None
    for style_cols in ([f"style_{d}" for d in STYLE_DIMS], [f"style{i}" for i in range(NUM_STYLE)]):
        if set(style_cols) <= set(table.columns):
            style = table[style_cols].to_numpy(np.int64)
    defects = None
    if {"blur", "noise", "fade"} <= set(table.columns):
        defects = (table[["blur", "noise", "fade"]].to_numpy(np.float64) > 0).astype(np.int64)
    titles = [""] * len(table)
    items_file = world / "items.parquet"
    if items_file.exists() and "item_id" in table.columns:
        items = pd.read_parquet(items_file).set_index("item_id")
        titles = [str(items.loc[i, "title"]) for i in table["item_id"]]
    return GateSet(
        images=_load_images(world, list(table[col])),
        motif=table["motif"].to_numpy(np.int64),
        palette=table["palette"].to_numpy(np.int64),
        titles=titles,
        style=style,
        source=f"{len(table)} covers of world {world}",
        defects=defects,
    )


def world_items(world: Path, limit: int | None = None) -> GateSet:
    """Items of `world` (title + reference image) with content from `truth/items.parquet`."""

    world = Path(world)
    items = pd.read_parquet(world / "items.parquet")
    truth = pd.read_parquet(world / "truth" / "items.parquet").set_index("item_id")
    if limit is not None:
        items = items.iloc[:limit]
    truth = truth.loc[items["item_id"]]
    return GateSet(
        images=_load_images(world, list(items["image"])),
        motif=truth["motif"].to_numpy(np.int64),
        palette=truth["palette"].to_numpy(np.int64),
        titles=[str(t) for t in items["title"]],
        style=None,
        source=f"{len(items)} items of world {world}",
    )
