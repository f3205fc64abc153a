"""`load_dataset` never reads (or even looks at) anything under <data>/truth/."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import pandas as pd
import PIL.Image
import pyarrow.parquet as pq
import pytest

from icg.data import load_dataset
from icg.data.testing import write_tiny_dataset


def under_truth(arg: object, root: Path) -> bool:
    if not isinstance(arg, str | bytes | os.PathLike):
        return False
    path = Path(os.fsdecode(arg))
    path = path if path.is_absolute() else Path.cwd() / path
    return Path(os.path.normpath(path)).is_relative_to(root / "truth")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_truth_never_touched(tmp_path, monkeypatch, fmt):
    root = write_tiny_dataset(tmp_path / "world", fmt=fmt).resolve()
    truth = root / "truth"
    truth.mkdir()
    (truth / "items.parquet").write_bytes(b"garbage, not parquet")
    (truth / "users.csv").write_text("\x00\x01 garbage")
    (truth / "ref.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    # an item pointing into truth/ is rejected without opening the file
    items = root / f"items.{fmt}"
    if fmt == "csv":
        items.write_text(items.read_text() + "i9,Spy,c,truth/ref.png\n")

    touched: list[object] = []

    def guard(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            if args and under_truth(args[0], root):
                touched.append((name, args[0]))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in [
        (builtins, "open"),
        (io, "open"),
        (os, "open"),
        (os, "stat"),
        (os, "lstat"),
        (os, "listdir"),
        (os, "scandir"),
        (PIL.Image, "open"),
        (pq, "read_table"),
        (pq, "ParquetFile"),
        (pd, "read_parquet"),
        (pd, "read_csv"),
    ]:
        guard(module, name)
    data = load_dataset(root)
    monkeypatch.undo()
    assert touched == []
    assert data.report.usable and len(data.items) == 3
    if fmt == "csv":
        assert data.report.tables["items"].rejected == {"forbidden_path": 1}
