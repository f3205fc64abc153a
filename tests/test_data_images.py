"""The safe image loader: formats, limits, corrupt files, modes, EXIF, tensors."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from icg.data import ImageLoadError, check_image, load_image, load_images_tensor
from icg.data.images import ImageChecker


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A 1×1 PNG whose IHDR claims ``width`` × ``height`` (CRC fixed): a cheap decompression
    bomb header."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def truncated(path: Path, fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("width,height,limit", [(20000, 20000, None), (3000, 3000, 1_000_000)])
def test_bomb_rejected_from_header(tmp_path, width, height, limit):
    path = bomb_png(tmp_path / "bomb.png", width, height)
    kwargs = {} if limit is None else {"max_pixels": limit}
    before = Image.MAX_IMAGE_PIXELS
    for fn in (check_image, load_image):
        with pytest.raises(ImageLoadError, match="bomb.png") as info:
            fn(path, **kwargs)
        assert info.value.reason == "image_too_large"
    assert Image.MAX_IMAGE_PIXELS == before  # PIL globals untouched


def test_truncated_png(tmp_path):
    path = truncated(tmp_path / "t.png")
    for fn in (check_image, load_image):
        with pytest.raises(ImageLoadError, match="t.png") as info:
            fn(path)
        assert info.value.reason == "corrupt_image"
        assert isinstance(info.value, ValueError)


def test_truncated_jpeg_fails_on_load(tmp_path):
    path = truncated(tmp_path / "t.jpg", "JPEG")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "corrupt_image"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 4, "corrupt_image"),
        (b"II*\x00" + b"\x00" * 32, "disallowed_format"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "disallowed_format"),
    ],
    ids=["empty", "png-garbage", "tiff", "svg"],
)
def test_bad_files(tmp_path, content, reason):
    path = tmp_path / "bad.img"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.reason == reason


def test_real_tiff_is_disallowed(tmp_path):
    path = tmp_path / "x.tif"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(ImageLoadError, match="TIFF is not allowed"):
        check_image(path)


def test_missing(tmp_path):
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path / "nope.png")
    assert info.value.reason == "missing_image"


def test_rgba_on_white(tmp_path):
    arr = np.zeros((1, 3, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 0)  # transparent red -> white
    arr[0, 1] = (0, 0, 255, 255)  # opaque blue
    arr[0, 2] = (255, 0, 0, 128)  # half red
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    assert load_image(tmp_path / "a.png").mode == "RGB"
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 255]
    assert np.allclose(out[0, 2], [255, 127, 127], atol=1)


def test_la_and_palette_transparency_on_white(tmp_path):
    Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA").save(tmp_path / "la.png")
    assert np.asarray(load_image(tmp_path / "la.png"))[0].tolist() == [[255] * 3, [0] * 3]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.gif", transparency=0)
    out = np.asarray(load_image(tmp_path / "p.gif"))
    assert out[0].tolist() == [[255, 255, 255], [255, 0, 0]]


def test_sixteen_bit_scaled(tmp_path):
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "g16.png"))[0, :, 0].astype(int)
    assert out.tolist() == [0, 1, 128, 255]
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([[65535, 0]], ">u2").tobytes())
    assert np.asarray(load_image_from(big_endian, tmp_path / "b.png"))[0, :, 0].tolist() == [
        255,
        0,
    ]


def load_image_from(img: Image.Image, path: Path) -> Image.Image:
    img.save(path)
    return load_image(path)


def test_exif_orientation(tmp_path):
    img = Image.new("RGB", (8, 4), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 4, 4))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "e.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "e.jpg")
    assert out.size == (4, 8)
    top = np.asarray(out)[1, 2].astype(int)
    assert top[0] > 200 and top[2] < 60  # the red half is now on top


def test_gif_first_frame_and_resize(tmp_path):
    frames = [Image.new("RGB", (6, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    out = load_image(tmp_path / "anim.gif", size=5)
    assert out.size == (5, 5)
    assert np.asarray(out)[2, 2].tolist() == [255, 0, 0]


def test_tensor(tmp_path):
    Image.new("RGB", (4, 6), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("L", (3, 3), 0).save(tmp_path / "b.bmp")
    batch = load_images_tensor([tmp_path / "a.png", tmp_path / "b.bmp"], size=8)
    assert tuple(batch.shape) == (2, 3, 8, 8)
    assert str(batch.dtype) == "torch.float32"
    assert float(batch[0, 0].min()) == 1.0 and float(batch[1].max()) == 0.0


def test_checker_caches(tmp_path, monkeypatch):
    Image.new("RGB", (2, 2)).save(tmp_path / "a.png")
    calls = []
    import icg.data.images as images

    real = images.check_image
    monkeypatch.setattr(images, "check_image", lambda p, **k: calls.append(p) or real(p, **k))
    checker = ImageChecker()
    assert checker(str(tmp_path / "a.png")) is None
    assert checker(str(tmp_path / "a.png")) is None
    assert checker(str(tmp_path / "missing.png")).reason == "missing_image"
    assert len(calls) == 2
