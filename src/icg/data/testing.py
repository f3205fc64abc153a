"""Tiny valid datasets for tests (ours and other packages'): a few rows, 8×8 PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from icg.data.writers import write_table


def tiny_frames(
    n_items: int = 3, n_users: int = 3, n_impressions: int = 6, dim: int = 4, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """Valid items, users and impressions frames (paths relative, images not written).

    Args:
        n_items: number of items (image ``images/i{k}.png``).
        n_users: number of users.
        n_impressions: number of impressions (cover ``covers/c{k}.png``, one per item).
        dim: user embedding length.
        seed: numpy seed of embeddings and clicks.
    """
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "title": [f"Item {k}" for k in range(n_items)],
            "category": ["books" if k % 2 else "music" for k in range(n_items)],
            "image": [f"images/i{k}.png" for k in range(n_items)],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in range(n_users)],
            "embedding": [rng.standard_normal(dim).astype(np.float32) for _ in range(n_users)],
        }
    )
    impressions = pd.DataFrame(
        {
            "event_id": [f"e{k}" for k in range(n_impressions)],
            "user_id": [f"u{k % n_users}" for k in range(n_impressions)],
            "item_id": [f"i{k % n_items}" for k in range(n_impressions)],
            "cover": [f"covers/c{k % n_items}.png" for k in range(n_impressions)],
            "position": [k % 5 for k in range(n_impressions)],
            "clicked": rng.random(n_impressions) < 0.5,
            "timestamp": np.arange(n_impressions, dtype=np.int64) + 1_700_000_000,
        }
    )
    return {"items": items, "users": users, "impressions": impressions}


def write_images(root: Path, relpaths: list[str], size: int = 8) -> None:
    """Write small solid-colour PNGs at ``root / relpath``."""
    for k, rel in enumerate(sorted(set(relpaths))):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (40 * k % 256, 80, 120)).save(path)


def write_frames(root: Path, frames: dict[str, pd.DataFrame], fmt: str = "parquet") -> None:
    """Write frames as ``<root>/<name>.<fmt>`` (parquet, csv or jsonl); embeddings in CSV are
    written as "[a, b, ...]" strings, in JSONL as lists."""
    root.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        if fmt == "parquet":
            write_table(name, frame, root)
            continue
        frame = frame.copy()
        if "embedding" in frame:
            frame["embedding"] = [list(map(float, v)) for v in frame["embedding"]]
        if fmt == "csv":
            if "embedding" in frame:
                frame["embedding"] = [json.dumps(v) for v in frame["embedding"]]
            frame.to_csv(root / f"{name}.csv", index=False)
        elif fmt == "jsonl":
            records = frame.to_dict(orient="records")
            lines = [json.dumps(r, default=_json_default) for r in records]
            (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        else:
            raise ValueError(f"fmt must be parquet, csv or jsonl, got {fmt!r}")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_tiny_dataset(root: str | Path, fmt: str = "parquet", **kwargs: int) -> Path:
    """Write a tiny valid dataset (tables + images) into ``root``; returns ``root``.

    Args:
        root: the data folder to create.
        fmt: table format: parquet, csv or jsonl.
        **kwargs: passed to `tiny_frames`.
    """
    root = Path(root)
    frames = tiny_frames(**kwargs)
    write_frames(root, frames, fmt)
    write_images(root, frames["items"]["image"].tolist() + frames["impressions"]["cover"].tolist())
    return root
