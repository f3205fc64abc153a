"""A set of small hostile files whose naive handling costs gigabytes, for the memory tests and
`benchmarks/bench_memory.py` (which imports it from tests/): each must end in a refusal read from its header.

Every file is a few hundred bytes on disk (sparse where the attack needs a large file), so the
set is cheap to build anywhere.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

THIN_WIDTH = 100_000


def _chunk(kind: bytes, data: bytes, length: int | None = None) -> bytes:
    size = len(data) if length is None else length
    return struct.pack(">I", size) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, extra: bytes = b"") -> bytes:
    """A valid 8-bit grey PNG of ``width`` × ``height`` (zeros), ``extra`` chunks before IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00" * ((width + 1) * height), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", raw)
        + _chunk(b"IEND", b"")
    )  # fmt: skip


def thin_png(path: Path, width: int = THIN_WIDTH) -> Path:
    """1 × ``width``: under the pixel cap, 64 × 64·width once a processor resizes its short edge."""
    path.write_bytes(png_bytes(width, 1))
    return path


def lying_chunk_png(path: Path, claim: int = 2**31, sparse: bool = False) -> Path:
    """An 8 × 8 PNG whose tEXt chunk claims ``claim`` bytes; with ``sparse`` the file is
    extended (without using disk) so that it holds them."""
    data = png_bytes(8, 8, _chunk(b"tEXt", b"k\x00v", length=claim))
    path.write_bytes(data)
    if sparse:
        with path.open("r+b") as f:
            f.truncate(len(data) + claim)
    return path


def huge_tensor_safetensors(path: Path, elements: int = 2**29) -> Path:
    """A safetensors file declaring one F32 tensor ``w`` of ``elements`` entries (2 GiB by
    default), sparse on disk, where the model expects ``w`` of shape (4,)."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [elements], "data_offsets": [0, elements * 4]}}
    )
    raw = header.encode() + b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with path.open("r+b") as f:
        f.truncate(8 + len(raw) + elements * 4)
    return path


def build(folder: Path) -> dict[str, Path]:
    """Write the hostile set into ``folder``; returns name → file."""
    folder.mkdir(parents=True, exist_ok=True)
    makers: dict[str, Callable[[Path], Path]] = {
        "thin.png": thin_png,
        "lying_chunk.png": lying_chunk_png,  # claims 2 GiB in a few hundred bytes
        "fat_chunk.png": lambda p: lying_chunk_png(p, 200 * 2**20, sparse=True),
        "oversized.png": lambda p: lying_chunk_png(p, 2**31, sparse=True),
        "huge_tensor.safetensors": huge_tensor_safetensors,
    }
    return {name: make(folder / name) for name, make in makers.items()}


def refuse_all(files: dict[str, Path]) -> dict[str, str]:
    """Open every file of the set the way icg does; returns name → the refusal's message.

    Raises:
        AssertionError: a file was accepted.
    """
    from icg.artifacts import ArtifactError, read_safetensors
    from icg.data.errors import ImageLoadError
    from icg.data.images import check_image, load_image

    out = {}
    for name, path in files.items():
        try:
            if name.endswith(".png"):
                check_image(path, decode=True)
                load_image(path, size=64)
            else:
                read_safetensors(path, {"w": (4,)})
        except (ImageLoadError, ArtifactError) as err:
            out[name] = str(err)
            continue
        raise AssertionError(f"{name}: accepted")
    return out
