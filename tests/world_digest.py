"""Content digests of a CoverWorld folder, independent of parquet encoding and PNG compression.

Each table is hashed column by column through its Python values (floats by their exact repr),
each image through its decoded pixels, so two worlds digest alike exactly when their contents
are equal, however they were chunked or compressed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image


def table_digest(path: Path) -> str:
    """sha256 of a parquet table's column names and values."""
    table = pq.read_table(path)
    h = hashlib.sha256()
    for name in table.column_names:
        h.update(name.encode())
        h.update(json.dumps(table.column(name).to_pylist()).encode())
    return h.hexdigest()


def images_digest(root: Path) -> str:
    """sha256 of every PNG under `root/images`, by relative path and decoded pixels."""
    h = hashlib.sha256()
    for p in sorted((root / "images").rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(np.asarray(Image.open(p).convert("RGB")).tobytes())
    return h.hexdigest()


def world_digests(root: Path | str) -> dict[str, str]:
    """Digest per table (relative path) plus "images"."""
    root = Path(root)
    out = {p.relative_to(root).as_posix(): table_digest(p) for p in sorted(root.rglob("*.parquet"))}
    out["images"] = images_digest(root)
    return out
