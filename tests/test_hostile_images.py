"""The image policy (`icg.data.image_policy`): what an image may cost once decoded is bounded
from its header, before any pixel or chunk body is read."""

from __future__ import annotations

import struct
import zlib

import pytest
from PIL import Image

from icg.data import ImageLoadError, check_image, load_image
from icg.data.image_policy import DEFAULT_POLICY, ImagePolicy, resized_pixels
from icg.data.images import ImageChecker, describe


def chunk(kind: bytes, data: bytes, length: int | None = None) -> bytes:
    """One PNG chunk; ``length`` overrides the declared length (a lying header)."""
    size = len(data) if length is None else length
    return struct.pack(">I", size) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, extra: bytes = b"") -> bytes:
    """A valid grey PNG of ``width`` × ``height`` (rows of zeros), with ``extra`` chunks before
    the image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00" * ((width + 1) * height), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )  # fmt: skip


def test_thin_strip_is_refused_from_the_header(tmp_path):
    """1 × 100,000 px is under the pixel cap but would be 64 × 6.4M after a short-edge resize."""
    path = tmp_path / "strip.png"
    path.write_bytes(png_bytes(100_000, 1))
    assert path.stat().st_size < 2_000
    for fn in (check_image, load_image):
        with pytest.raises(ImageLoadError, match="aspect ratio of 1e\\+05") as info:
            fn(path)
        assert info.value.reason == "image_too_large"
        assert "strip.png" in str(info.value)
    assert ImageChecker()(str(path)).reason == "image_too_large"


def test_resized_size_cap_bites_below_the_aspect_cap(tmp_path):
    policy = ImagePolicy(max_aspect=100, resize_edge=64, max_resized_pixels=64 * 64 * 8)
    path = tmp_path / "wide.png"
    path.write_bytes(png_bytes(900, 10))  # aspect 90: 64 × 5760 once resized
    with pytest.raises(ImageLoadError, match="once its short edge is resized to 64"):
        load_image(path, policy=policy)
    assert resized_pixels(900, 10, 64) == 64 * 5760
    path.write_bytes(png_bytes(80, 10))  # aspect 8: within both caps
    assert load_image(path, policy=policy).size == (80, 10)


def test_default_policy_is_self_consistent():
    """Under the default aspect cap, the resized cap holds for every image."""
    p = DEFAULT_POLICY
    assert resized_pixels(int(p.resize_edge * p.max_aspect), p.resize_edge, p.resize_edge) <= (
        p.max_resized_pixels
    )
    assert p.size_problem(512, 512) is None
    assert p.size_problem(1, 17)[0] == "image_too_large"


def test_png_chunk_longer_than_the_file_is_refused_before_reading(tmp_path, monkeypatch):
    """A tEXt chunk that claims 2 GB in a file of a few hundred bytes: no chunk body is read."""
    path = tmp_path / "liar.png"
    path.write_bytes(png_bytes(8, 8, chunk(b"tEXt", b"k\x00v", length=2**31)))
    reads: list[int] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        reads.append(fp.tell())
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    for fn in (check_image, load_image):
        with pytest.raises(ImageLoadError, match="claims 2147483648 bytes") as info:
            fn(path)
        assert info.value.reason == "corrupt_image"
    assert reads == []  # refused before PIL saw the file


def test_huge_ancillary_chunk_is_refused(tmp_path):
    policy = ImagePolicy(max_chunk_bytes=1024)
    path = tmp_path / "fat.png"
    path.write_bytes(png_bytes(8, 8, chunk(b"tEXt", b"k\x00" + b"v" * 4096)))
    with pytest.raises(ImageLoadError, match="'tEXt' of 4098 bytes, over the limit of 1024"):
        check_image(path, policy=policy)
    assert check_image(path) == ("PNG", 8, 8)  # the default allows 8 MiB of metadata


def test_file_larger_than_its_pixels_can_need_is_refused(tmp_path):
    """A sparse 300 MB file behind a valid small header: refused by its size, never read."""
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(8, 8))
    with path.open("r+b") as f:
        f.truncate(300 * 2**20)
    with pytest.raises(ImageLoadError, match="over the limit of 268435456") as info:
        check_image(path)
    assert info.value.reason == "image_too_large"
    small = ImagePolicy(max_chunk_bytes=1024)
    with path.open("r+b") as f:
        f.truncate(200_000)
    with pytest.raises(ImageLoadError, match="for a 8x8 image, which needs at most"):
        load_image(path, policy=small)


def test_corrupt_image_messages_hold_no_object_reprs(tmp_path):
    path = tmp_path / "junk.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert "<" not in str(info.value) and "BufferedReader" not in str(info.value)
    err = OSError("cannot identify image file <_io.BufferedReader name=16>")
    assert describe(err) == "cannot identify image file the file"


def test_thin_item_image_is_a_per_row_reject_in_a_data_folder(tmp_path):
    """The 1 × 200,000 item that once passed `icg data validate` (and then cost generate
    8.7 GB) is rejected per row; every other row stays."""
    from hostile_files import thin_png
    from hostile_fixtures import Workspace
    from typer.testing import CliRunner

    from icg.cli import build_app
    from icg.data import load_dataset

    ws = Workspace(tmp_path)
    thin_png(ws.data / "thin.png", 200_000)
    rows = ws.items()
    rows[0]["image"] = "thin.png"
    ws.rewrite("items", rows)
    data = load_dataset(ws.data)
    rejects = data.rejects["items"]
    assert rejects["reason"].tolist() == ["image_too_large"]
    assert rows[0]["item_id"] not in set(data.items["item_id"])
    assert len(data.items) == len(rows) - 1
    result = CliRunner().invoke(build_app(), ["data", "validate", str(ws.data)])
    assert result.exit_code == 0 and "aspect ratio of 2e+05" in result.output
    assert ws.unchanged()
