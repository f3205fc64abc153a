"""From a request to a `CoverJob`: user and item look-ups, uploads through the safe loader."""

from __future__ import annotations

import base64
import binascii
import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from icg.data.errors import ImageLoadError
from icg.data.images import load_image
from icg.data.schemas import Reason
from icg.generation import pair_seed
from icg.serve.errors import APIError
from icg.serve.schemas import CoverJob, CoverRequest, Settings


@dataclass(frozen=True)
class Item:
    """A catalogue item: its title and reference image file (or none)."""

    title: str
    image: Path | None


@dataclass
class Catalog:
    """The users and items a request may name.

    Args:
        users: user id → embedding ``(E,)`` float32.
        items: item id → `Item`.
        embedding_dim: ``E``, the length a request's ``user_embedding`` must have.
    """

    users: Mapping[str, np.ndarray]
    items: Mapping[str, Item]
    embedding_dim: int

    @classmethod
    def from_dataset(cls, data) -> Catalog:
        """The catalogue of a `PlatformData` (its users and items tables)."""
        if data.users is None or data.items is None:
            raise ValueError(f"{data.root}: the server needs both the users and items tables")
        users = {
            str(u): np.asarray(e, dtype=np.float32)
            for u, e in zip(data.users["user_id"], data.users["embedding"], strict=True)
        }
        items = {
            str(i): Item(str(t), Path(p) if isinstance(p, str) and p else None)
            for i, t, p in zip(
                data.items["item_id"], data.items["title"], data.items["image"], strict=True
            )
        }
        return cls(users, items, int(data.embedding_dim))

    def user(self, request: CoverRequest) -> tuple[str, np.ndarray | None]:
        """``(user key, embedding or None)``; the key is ``""`` for cold start.

        Raises:
            APIError: 404 for an unknown ``user_id`` (unless ``allow_cold_start``), 422 for an
                embedding of the wrong length.
        """
        if request.user_embedding is not None:
            emb = np.asarray(request.user_embedding, dtype=np.float32)  # (E,)
            if self.embedding_dim and len(emb) != self.embedding_dim:
                raise APIError(
                    422, "invalid_request",
                    f"user_embedding: expected {self.embedding_dim} numbers, got {len(emb)}",
                )  # fmt: skip
            return "emb:" + hashlib.blake2b(emb.tobytes(), digest_size=8).hexdigest(), emb
        if request.user_id is None:
            return "", None
        if request.user_id in self.users:
            return request.user_id, self.users[request.user_id]
        if request.allow_cold_start:
            return "", None
        raise APIError(
            404, "unknown_user", f"user_id {request.user_id!r} is not in the users table"
        )

    def item(
        self, request: CoverRequest, max_pixels: int
    ) -> tuple[str, str, Path | Image.Image | None]:
        """``(item key, title, reference image)`` of a catalogue item or an upload.

        Raises:
            APIError: 404 for an unknown ``item_id``; 413 or 422 for a bad upload.
        """
        if request.item_id is not None:
            found = self.items.get(request.item_id)
            if found is None:
                raise APIError(
                    404, "unknown_item", f"item_id {request.item_id!r} is not in the items table"
                )
            return request.item_id, found.title, found.image
        raw = decode_base64(request.image or "")
        image = load_upload(raw, max_pixels)
        h = hashlib.blake2b(digest_size=8)
        for field in (raw, (request.title or "").encode()):  # length-prefixed: fields never merge
            h.update(len(field).to_bytes(8, "little") + field)
        digest = h.hexdigest()
        return f"upload:{digest}", request.title or "", image


def decode_base64(text: str) -> bytes:
    """Bytes of a base64 (optionally ``data:...;base64,``-prefixed) string; 422 when invalid."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise APIError(422, "bad_upload", f"image: not valid base64 ({err})") from err
    if not raw:
        raise APIError(422, "bad_upload", "image: empty upload")
    return raw


def load_upload(raw: bytes, max_pixels: int) -> Image.Image:
    """Decode an uploaded image with the safe loader (format allow-list, pixel cap from the
    header before decoding): 413 when too large, 422 when not a usable image."""
    with tempfile.TemporaryDirectory(prefix="icg-upload-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(raw)
        try:
            return load_image(path, max_pixels=max_pixels)
        except ImageLoadError as err:
            status = 413 if err.reason == Reason.IMAGE_TOO_LARGE else 422
            raise APIError(status, "bad_upload", f"image: {err.detail}") from err


def resolve(
    catalog: Catalog, request: CoverRequest, settings: Settings, seed: int, max_pixels: int
) -> CoverJob:
    """The job of a validated request: draw ``k`` has the seed ``pair_seed(seed, user, item, k)``,
    the same per-pair seeds as `icg generate`."""
    user_key, emb = catalog.user(request)
    item_key, title, image = catalog.item(request, max_pixels)
    seeds = [pair_seed(seed, user_key, item_key, k) for k in range(request.candidates)]
    return CoverJob(user_key, emb, item_key, title, image, seeds, settings)
