"""One image policy for uploads, data folders and batch: what an image may cost once decoded.

The pixel cap alone does not bound memory: a 1 × 100,000 PNG of a few hundred bytes is far
under it, but a processor that resizes the short edge to 64 px turns it into 64 × 6,400,000
pixels. So the policy also caps the aspect ratio and the size after such a resize, and it checks
the file against what its header claims (a file far larger than its pixels can need, a PNG chunk
longer than the bytes left, a huge ancillary chunk) before anything reads the body. Every check
reads at most the header and the chunk headers; nothing is decoded.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from icg.data.schemas import Reason

DEFAULT_MAX_PIXELS = 50_000_000
"""Default pixel limit (width × height), about 7000 × 7000: far above any cover, far below a
decompression bomb."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DATA_CHUNKS = {b"IDAT", b"fdAT"}  # image data: bounded by the file-size check instead


@dataclass(frozen=True)
class ImagePolicy:
    """Limits on one image, all checked from its header before decoding.

    Args:
        max_pixels: width × height as stored.
        max_aspect: the longer side over the shorter one (a 1 × 100,000 strip is refused).
        resize_edge: the largest short edge a processor resizes to (CLIP, MLLM processors).
        max_resized_pixels: width × height once the short edge is scaled to ``resize_edge``.
        max_file_bytes: the file's size on disk.
        max_chunk_bytes: one PNG chunk other than image data (text, ICC profile, EXIF).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = 16.0
    resize_edge: int = 512
    max_resized_pixels: int = 4_194_304
    max_file_bytes: int = 256 * 2**20
    max_chunk_bytes: int = 8 * 2**20

    def with_pixels(self, max_pixels: int | None) -> ImagePolicy:
        """This policy with another pixel cap (``None``: unchanged)."""
        if max_pixels is None or max_pixels == self.max_pixels:
            return self
        return ImagePolicy(
            max_pixels, self.max_aspect, self.resize_edge, self.max_resized_pixels,
            self.max_file_bytes, self.max_chunk_bytes,
        )  # fmt: skip

    def size_problem(self, width: int, height: int) -> tuple[Reason, str] | None:
        """Why an image of ``width`` × ``height`` is refused, or None."""
        if width <= 0 or height <= 0:
            return Reason.CORRUPT_IMAGE, f"invalid size {width}x{height}"
        if width * height > self.max_pixels:
            return Reason.IMAGE_TOO_LARGE, (
                f"image is {width}x{height} = {width * height} pixels, over the limit of "
                f"{self.max_pixels}"
            )
        aspect = max(width, height) / min(width, height)
        if aspect > self.max_aspect:
            return Reason.IMAGE_TOO_LARGE, (
                f"image is {width}x{height}, an aspect ratio of {aspect:.4g}, over the limit of "
                f"{self.max_aspect:g}"
            )
        resized = resized_pixels(width, height, self.resize_edge)
        if resized > self.max_resized_pixels:
            return Reason.IMAGE_TOO_LARGE, (
                f"image is {width}x{height}: {resized} pixels once its short edge is resized to "
                f"{self.resize_edge}, over the limit of {self.max_resized_pixels}"
            )
        return None

    def file_problem(self, size: int, width: int, height: int) -> tuple[Reason, str] | None:
        """Why a file of ``size`` bytes is refused for an image of ``width`` × ``height``: over
        ``max_file_bytes``, or larger than its pixels could need at 16-bit RGBA (8 bytes a pixel,
        plus ``max_chunk_bytes`` for metadata)."""
        if size > self.max_file_bytes:
            return Reason.IMAGE_TOO_LARGE, (
                f"file of {size} bytes, over the limit of {self.max_file_bytes}"
            )
        need = width * height * 8 + self.max_chunk_bytes
        if size > need:
            return Reason.CORRUPT_IMAGE, (
                f"file of {size} bytes for a {width}x{height} image, which needs at most {need}"
            )
        return None


DEFAULT_POLICY = ImagePolicy()


def resized_pixels(width: int, height: int, edge: int) -> int:
    """Pixels of a ``width`` × ``height`` image once its short edge is scaled to ``edge``."""
    scale = edge / min(width, height)
    return math.ceil(width * scale) * math.ceil(height * scale)


def file_size(fp: BinaryIO) -> int:
    """Bytes in an open file (``fstat``, no read)."""
    return os.fstat(fp.fileno()).st_size


def png_chunk_problem(fp: BinaryIO, size: int, max_chunk_bytes: int) -> str | None:
    """Walk a PNG's chunk headers by seeking (no chunk body is read) and say what is wrong:
    a chunk longer than the bytes left in the file, or a non-image chunk over
    ``max_chunk_bytes``. Returns None for a sound chunk layout; ``fp`` is left at 0."""
    try:
        pos = len(PNG_SIGNATURE)
        while pos + 8 <= size:
            fp.seek(pos)
            header = fp.read(8)
            if len(header) < 8:
                break
            length, kind = struct.unpack(">I4s", header)
            name = kind.decode("latin-1")
            left = size - pos - 12
            if length > left:
                return (
                    f"PNG chunk {name!r} at byte {pos} claims {length} bytes, "
                    f"the file has {max(left, 0)} left"
                )
            if kind not in _PNG_DATA_CHUNKS and length > max_chunk_bytes:
                return f"PNG chunk {name!r} of {length} bytes, over the limit of {max_chunk_bytes}"
            if kind == b"IEND":
                break
            pos += 12 + length
        return None
    finally:
        fp.seek(0)
