"""Shared pieces of the fault-injection tests (tests/test_hostile*.py): a tree hash that never
opens special files, a workspace with a data folder and a decoy outside it, and a stub pipeline."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from PIL import Image

from icg.data.testing import tiny_frames, write_frames, write_images


def tree_hash(root: Path) -> dict[str, str]:
    """Relative path → content hash (files), link target (symlinks) or type (folders, FIFOs),
    for everything under ``root``; special files are typed with lstat, never opened."""
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                out[rel] = "link:" + os.readlink(path)
            elif stat.S_ISREG(mode):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir" if stat.S_ISDIR(mode) else f"special:{stat.S_IFMT(mode)}"
    return out


class Workspace:
    """``tmp/data`` (a tiny valid dataset), ``tmp/outside`` (a decoy a write must never reach)
    and ``tmp/out`` (where outputs go). `unchanged` says whether everything but ``out`` is as
    it was when the workspace was made (or at the last `snapshot`)."""

    def __init__(self, tmp: Path, fmt: str = "jsonl") -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.outside = tmp / "outside"
        self.out = tmp / "out"
        self.frames = tiny_frames()
        write_frames(self.data, self.frames, fmt)
        images = (
            self.frames["items"]["image"].tolist() + self.frames["impressions"]["cover"].tolist()
        )
        write_images(self.data, list(images))
        self.outside.mkdir()
        (self.outside / "secret.txt").write_text("do not touch\n")
        Image.new("RGB", (8, 8), (1, 2, 3)).save(self.outside / "secret.png")
        self.snapshot()

    def snapshot(self) -> None:
        self.before = self._state()

    def _state(self) -> dict[str, str]:
        state = tree_hash(self.tmp)
        return {k: v for k, v in state.items() if k != "out" and not k.startswith("out/")}

    def unchanged(self) -> bool:
        return self._state() == self.before

    def rewrite(self, table: str, rows: list[dict], fmt: str = "jsonl") -> None:
        """Replace a table with ``rows`` (JSONL) and take a new snapshot."""
        frame = pd.DataFrame(rows)
        for suffix in (".jsonl", ".csv", ".parquet"):
            (self.data / f"{table}{suffix}").unlink(missing_ok=True)
        write_frames(self.data, {table: frame}, fmt)
        self.snapshot()

    def items(self) -> list[dict]:
        return [dict(r) for r in self.frames["items"].to_dict(orient="records")]

    def users(self) -> list[dict]:
        return [
            {"user_id": r["user_id"], "embedding": [float(x) for x in r["embedding"]]}
            for r in self.frames["users"].to_dict(orient="records")
        ]


class StubPipe:
    """What `generate_covers` needs of an `ICGPipeline`: a device and solid-colour images."""

    def __init__(self) -> None:
        self.denoiser = SimpleNamespace(device="cpu")

    def __call__(self, titles, images, **kwargs):
        pics = [
            Image.fromarray(np.full((8, 8, 3), 7 * k % 256, np.uint8)) for k in range(len(titles))
        ]
        return SimpleNamespace(images=pics)
