"""The one safe image loader: allow-listed formats, the image policy (`icg.data.image_policy`:
pixels, aspect ratio, size after a processor's resize, file and chunk sizes) read from the header
before decoding, corrupt files as `ImageLoadError`, alpha on white, 16-bit to 8-bit, EXIF
orientation.

Every file is opened through the builtin `open` and handed to PIL as a file object; PIL's global
settings (`Image.MAX_IMAGE_PIXELS`, `ImageFile.LOAD_TRUNCATED_IMAGES`) are never changed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from icg.data.errors import ImageLoadError
from icg.data.image_policy import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_POLICY,
    ImagePolicy,
    file_size,
    png_chunk_problem,
)
from icg.data.safety import NotRegularFileError, open_regular
from icg.data.schemas import Reason
from icg.io import describe_error

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_FORMATS", "DEFAULT_MAX_PIXELS", "DEFAULT_POLICY", "ImageChecker", "ImagePolicy",
    "check_image", "load_image", "load_images_tensor", "sniff_format", "to_rgb",
]  # fmt: skip

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
"""PIL format names we decode. GIF (and animated WEBP) give their first frame."""

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)
describe = describe_error  # a decoder's message without object reprs


def _policy(policy: ImagePolicy | None, max_pixels: int | None) -> ImagePolicy:
    return (policy or DEFAULT_POLICY).with_pixels(max_pixels)


def sniff_format(head: bytes) -> str | None:
    """Name an image format from the first 16 bytes of a file, or None when unknown.

    Args:
        head: the file's first bytes (at least 12 for WEBP).
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head[4:8] == b"ftyp":
        return "HEIF/AVIF"
    if head.lstrip().startswith(b"<"):
        return "SVG/XML"
    return None


def _open_file(path: Path):
    """``open(path, "rb")``, with a missing or unreadable file as an `ImageLoadError`."""
    try:
        return open_regular(path)  # a FIFO or device is refused before it is opened
    except FileNotFoundError as err:
        raise ImageLoadError(path, Reason.MISSING_IMAGE, "image file not found") from err
    except NotRegularFileError as err:
        raise ImageLoadError(path, Reason.NOT_A_FILE, f"image path {err}") from err
    except ValueError as err:  # e.g. an embedded NUL byte
        raise ImageLoadError(path, Reason.BAD_PATH, f"invalid image path: {err}") from err
    except OSError as err:
        raise ImageLoadError(path, Reason.MISSING_IMAGE, f"image not readable: {err}") from err


def _open_header(fp, path: Path, policy: ImagePolicy) -> Image.Image:
    """Open an image lazily (header only) and enforce the format allow-list and the policy:
    pixels, aspect ratio, resized size, file size and (PNG) chunk lengths, before any decoding."""
    head = fp.read(16)
    fp.seek(0)
    if not head:
        raise ImageLoadError(path, Reason.CORRUPT_IMAGE, "empty file, expected an image")
    fmt = sniff_format(head)
    if fmt not in ALLOWED_FORMATS:
        raise ImageLoadError(
            path,
            Reason.DISALLOWED_FORMAT,
            f"format {fmt or 'unknown'} is not allowed, expected one of {', '.join(ALLOWED_FORMATS)}",
        )
    size = file_size(fp)
    if size > policy.max_file_bytes:
        raise ImageLoadError(
            path, Reason.IMAGE_TOO_LARGE,
            f"file of {size} bytes, over the limit of {policy.max_file_bytes}",
        )  # fmt: skip
    if fmt == "PNG":  # before PIL reads any chunk body
        problem = png_chunk_problem(fp, size, policy.max_chunk_bytes)
        if problem is not None:
            raise ImageLoadError(path, Reason.CORRUPT_IMAGE, problem)
    try:
        with warnings.catch_warnings():
            # Our own limit below is the one that counts; PIL's warning adds nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageLoadError(path, Reason.IMAGE_TOO_LARGE, f"image too large: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(path, Reason.CORRUPT_IMAGE, f"not a readable {fmt} file") from err
    except _DECODE_ERRORS as err:
        raise ImageLoadError(
            path, Reason.CORRUPT_IMAGE, f"corrupt {fmt} header: {describe(err)}"
        ) from err
    width, height = img.size
    problem = policy.size_problem(width, height) or policy.file_problem(size, width, height)
    if problem is not None:
        raise ImageLoadError(path, *problem)
    return img


def check_image(
    path: str | Path,
    *,
    max_pixels: int | None = None,
    decode: bool = False,
    policy: ImagePolicy | None = None,
) -> tuple[str, int, int]:
    """Cheaply check an image file without decoding its pixels.

    Reads the header (format allow-list, the image policy) and runs PIL's
    ``verify()`` (for PNG this checks every chunk's CRC, catching truncation; JPEG truncation is
    only caught when decoding, by `load_image`, which ``decode=True`` also runs).

    Args:
        path: the image file.
        max_pixels: the largest width × height accepted (overrides the policy's).
        decode: also decode the pixels as `load_image` does (what validation for training uses,
            so an image that passes is one training can load).
        policy: the limits (default `DEFAULT_POLICY`).

    Returns:
        (format, width, height).

    Raises:
        ImageLoadError: with ``reason`` one of missing_image, corrupt_image, image_too_large,
            disallowed_format.
    """
    path, policy = Path(path), _policy(policy, max_pixels)
    with _open_file(path) as fp:
        img = _open_header(fp, path, policy)
        fmt, (width, height) = img.format or "?", img.size
        try:
            img.verify()
        except _DECODE_ERRORS as err:
            raise ImageLoadError(
                path, Reason.CORRUPT_IMAGE, f"corrupt {fmt} data: {describe(err)}"
            ) from err
    if decode:  # what training will do with it: a truncated JPEG only fails here
        load_image(path, policy=policy)
    return fmt, width, height


class ImageChecker:
    """`check_image` with a cache, so each distinct path is checked once.

    Args:
        max_pixels: the largest width × height accepted (overrides the policy's).
        decode: decode the pixels too (default), so every image that passes loads in training.
        policy: the limits (default `DEFAULT_POLICY`).
    """

    def __init__(
        self,
        max_pixels: int | None = None,
        decode: bool = True,
        policy: ImagePolicy | None = None,
    ) -> None:
        self.policy = _policy(policy, max_pixels)
        self.max_pixels = self.policy.max_pixels
        self.decode = decode
        self._cache: dict[str, ImageLoadError | None] = {}

    def __call__(self, path: str) -> ImageLoadError | None:
        """Return the problem with the image at ``path``, or None when it is fine."""
        if path not in self._cache:
            try:
                check_image(path, decode=self.decode, policy=self.policy)
                self._cache[path] = None
            except ImageLoadError as err:
                self._cache[path] = err
        return self._cache[path]

    def __len__(self) -> int:
        return len(self._cache)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float grayscale image to 8-bit "L"."""
    arr = np.asarray(img).astype(np.float64)  # (H, W)
    if img.mode.startswith("I;16"):
        arr = arr / 257.0  # 65535 -> 255
    elif img.mode == "I":
        peak = float(arr.max(initial=0.0))
        if peak > 65535:
            arr = arr * (255.0 / peak)
        elif peak > 255:
            arr = arr / 257.0  # 16-bit data decoded as 32-bit "I" (e.g. some PNGs)
    elif img.mode == "F" and float(arr.max(initial=0.0)) <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded PIL image to 8-bit RGB, compositing transparency on white.

    Args:
        img: a loaded image of any mode.
    """
    if img.mode in _HIGH_DEPTH_MODES:
        img = _high_depth_to_l(img)
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    if has_alpha:
        if img.mode == "1":
            img = img.convert("L")
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def load_image(
    path: str | Path,
    *,
    size: int | None = None,
    max_pixels: int | None = None,
    policy: ImagePolicy | None = None,
) -> Image.Image:
    """Load an image safely as 8-bit RGB.

    Args:
        path: the image file (PNG, JPEG, WEBP, BMP or GIF; GIF gives its first frame).
        size: when given, resize to ``size`` × ``size`` (bicubic).
        max_pixels: the largest width × height accepted (overrides the policy's).
        policy: the limits checked from the header before decoding (default
            `DEFAULT_POLICY`: pixels, aspect ratio, size after a resize, file and chunk sizes).

    Returns:
        An RGB image with EXIF orientation applied and transparency composited on white.

    Raises:
        ImageLoadError: missing, truncated or corrupt file, disallowed format, or too many
            pixels; the message names the path.
    """
    path, policy = Path(path), _policy(policy, max_pixels)
    with _open_file(path) as fp:
        img = _open_header(fp, path, policy)
        fmt = img.format
        try:
            img.load()
        except _DECODE_ERRORS as err:
            raise ImageLoadError(
                path, Reason.CORRUPT_IMAGE, f"corrupt or truncated {fmt} image: {describe(err)}"
            ) from err
    try:
        img = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as err:  # broken EXIF block: keep the pixels as stored
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", path, err)
    try:
        img = to_rgb(img)
    except _DECODE_ERRORS as err:
        raise ImageLoadError(
            path, Reason.CORRUPT_IMAGE, f"cannot convert mode {img.mode} to RGB: {describe(err)}"
        ) from err
    if size is not None:
        if size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return img


def load_images_tensor(
    paths: Sequence[str | Path],
    size: int,
    *,
    max_pixels: int | None = None,
    policy: ImagePolicy | None = None,
) -> torch.Tensor:
    """Load images into one float tensor.

    Args:
        paths: image files.
        size: every image is resized to ``size`` × ``size``.
        max_pixels: per-image pixel limit (see `load_image`).
        policy: the limits (see `load_image`).

    Returns:
        A float32 tensor of shape (B, 3, size, size) with values in [0, 1].
    """
    # deferred: measured import cost: torch adds ~2.8 s to `icg data validate`, which never
    # calls this (icg.data.images alone imports in ~1.1 s on the loaded 2-core machine)
    import torch

    if not paths:
        return torch.empty(0, 3, size, size)
    arrays = [
        np.asarray(load_image(p, size=size, max_pixels=max_pixels, policy=policy)) for p in paths
    ]
    batch = torch.from_numpy(np.stack(arrays))  # (B, H, W, 3) uint8
    return batch.permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # (B, 3, H, W)
