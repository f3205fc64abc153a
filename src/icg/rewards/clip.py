"""Differentiable CLIP towers shared by the rewards and the preference model.

CLIP preprocessing is done in torch (resize, centre crop, mean/std from the model's image
processor config), never through PIL, so that gradients reach the image. The cover-embedding
cache of the preference model goes through the very same function, so the embeddings the
preference model was trained on and the ones the reward computes on generated covers agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from transformers import AutoTokenizer, CLIPModel

from icg.artifacts import refuse_pickle_weights
from icg.data.images import load_image
from icg.io import atomic_path
from icg.zoo import resolve

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPreprocess:
    """What CLIP's image processor does, as numbers: resize the shortest edge, centre crop, normalise.

    Args:
        shortest_edge: the shortest edge after resizing.
        crop: ``(height, width)`` of the centre crop.
        mean, std: per-channel normalisation.
    """

    shortest_edge: int
    crop: tuple[int, int]
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_image_processor(cls, processor) -> ClipPreprocess:
        """Read the numbers off a ``CLIPImageProcessor``, its config dict, or anything shaped alike."""

        def field(obj, key):
            if obj is None:
                return None
            return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

        size = field(processor, "size")
        crop = field(processor, "crop_size")
        if isinstance(size, int | float):
            edge = int(size)
        else:
            edge = field(size, "shortest_edge") or min(
                field(size, "height") or 224, field(size, "width") or 224
            )
        crop_h = field(crop, "height") if not isinstance(crop, int | float) else crop
        crop_w = field(crop, "width") if not isinstance(crop, int | float) else crop
        if (
            not field(processor, "do_center_crop")
            and field(processor, "do_center_crop") is not None
        ):
            crop_h = crop_w = None
        crop_hw = (int(crop_h or edge), int(crop_w or edge))
        mean = tuple(float(v) for v in (field(processor, "image_mean") or OPENAI_CLIP_MEAN))
        std = tuple(float(v) for v in (field(processor, "image_std") or OPENAI_CLIP_STD))
        return cls(int(edge), crop_hw, mean, std)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ClipPreprocess | None:
        """From ``<path>/preprocessor_config.json`` (``None`` when there is none)."""
        file = Path(path) / "preprocessor_config.json"
        if not file.is_file():
            return None
        config = json.loads(file.read_text())
        return cls.from_image_processor(config.get("image_processor", config))

    @classmethod
    def for_model(cls, model: nn.Module) -> ClipPreprocess:
        """Defaults from a CLIP model config alone: ``image_size`` square, OpenAI mean/std."""
        size = int(model.config.vision_config.image_size)
        return cls(size, (size, size))


def resolve_name(name_or_path: str | Path, what: str = "clip") -> str:
    """``zoo:NAME`` → the shipped folder (``FileNotFoundError`` when not trained); else unchanged.
    A local path holding pickle-format weights is an ``ArtifactError``."""
    name = str(name_or_path)
    if name.startswith("zoo:"):
        name = str(resolve(name))
    refuse_pickle_weights(name, what)  # before any loader sees a pickle
    return name


def clip_preprocess(images: torch.Tensor, pre: ClipPreprocess) -> torch.Tensor:
    """Differentiable CLIP preprocessing: ``(B, 3, H, W)`` in [0, 1] → normalised ``(B, 3, h, w)``.

    Radford et al. 2021 (CLIP), Sec. 2.3 / the reference ``_transform``: bicubic resize of the
    shortest edge, centre crop, normalisation. We use bilinear with antialiasing (well defined
    for gradients when downscaling).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    scale = pre.shortest_edge / min(h, w)
    new_h, new_w = max(pre.crop[0], round(h * scale)), max(pre.crop[1], round(w * scale))
    if (new_h, new_w) != (h, w):
        images = F.interpolate(
            images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )  # (B, 3, new_h, new_w)
    top, left = (new_h - pre.crop[0]) // 2, (new_w - pre.crop[1]) // 2
    images = images[..., top : top + pre.crop[0], left : left + pre.crop[1]]  # (B, 3, h, w)
    mean = images.new_tensor(pre.mean).view(1, 3, 1, 1)
    std = images.new_tensor(pre.std).view(1, 3, 1, 1)
    return (images - mean) / std


def freeze(module: nn.Module) -> nn.Module:
    """Reward and base models are frozen: no parameter requires grad, and eval mode."""
    module.requires_grad_(False)
    module.eval()
    return module


class ClipTowers(nn.Module):
    """A frozen transformers ``CLIPModel`` with differentiable image and cached text embeddings.

    Args:
        model: a ``CLIPModel`` (any size).
        tokenizer: its tokenizer (needed for text embeddings only).
        preprocess: the image preprocessing (default: read from ``model.config``).
        name_or_path: where the model came from (recorded by the preference model).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        preprocess: ClipPreprocess | None = None,
        name_or_path: str | None = None,
    ) -> None:
        super().__init__()
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.preprocess = preprocess or ClipPreprocess.for_model(model)
        self.name_or_path = name_or_path
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> ClipTowers:
        """Load a ``CLIPModel``, its tokenizer and image processor (``zoo:clip`` allowed)."""

        path = resolve_name(name_or_path)
        model = CLIPModel.from_pretrained(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            logger.warning("%s: no tokenizer (%s); text embeddings unavailable", path, err)
            tokenizer = None
        pre = ClipPreprocess.from_pretrained(path) or ClipPreprocess.for_model(model)
        return cls(model, tokenizer, pre, name_or_path=name_or_path)

    def train(self, mode: bool = True) -> ClipTowers:
        """Stays in eval mode: the towers are frozen."""
        super().train(False)
        return self

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def fingerprint(self) -> str:
        """A short hash identifying the weights and preprocessing (keys the embedding cache)."""
        h = hashlib.sha1(
            json.dumps(self.model.config.to_dict(), sort_keys=True, default=str).encode()
        )
        h.update(repr(self.preprocess).encode())
        for p in (
            self.model.visual_projection.weight,
            self.model.vision_model.embeddings.patch_embedding.weight,
        ):
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, E)`` of images ``(B, 3, H, W)`` in [0, 1]."""
        param = self.model.visual_projection.weight
        x = clip_preprocess(images.to(param.dtype), self.preprocess)  # (B, 3, h, w)
        pooled = self.model.vision_model(pixel_values=x).pooler_output  # (B, hidden)
        return F.normalize(self.model.visual_projection(pooled), dim=-1)  # (B, E)

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``(B, E)``, computed once per distinct text and cached.

        Each text is embedded on its own (no padding), so its embedding does not depend on which
        other texts first needed one: a resumed run scores exactly as an uninterrupted one."""
        if self.tokenizer is None:
            raise ValueError("text_embeds: this CLIP has no tokenizer")
        max_len = int(self.model.config.text_config.max_position_embeddings)
        device = self.model.text_projection.weight.device
        for text in dict.fromkeys(t for t in texts if t not in self._text_cache):
            tok = self.tokenizer([text], truncation=True, max_length=max_len, return_tensors="pt")
            out = self.model.text_model(
                input_ids=tok["input_ids"].to(device),
                attention_mask=tok["attention_mask"].to(device),
            )
            self._text_cache[text] = F.normalize(
                self.model.text_projection(out.pooler_output), dim=-1
            )[0]
        return torch.stack([self._text_cache[t] for t in texts])  # (B, E)


def cache_key(path: str | Path) -> str:
    """Cache key of an image file: absolute path, mtime (ns) and size."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_mtime_ns}|{st.st_size}"


def embed_files(
    towers: ClipTowers,
    paths: Sequence[str | Path],
    cache_file: str | Path | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """CLIP image embeddings ``(N, E)`` of image files, through a safetensors cache.

    The cache holds one row per ``cache_key`` (path + mtime + size) and the fingerprint of the
    CLIP it was computed with; a changed file or model recomputes only what changed. Writes are
    atomic (temp file in the same folder, then rename).

    Args:
        towers: the CLIP.
        paths: image files (any size; resized in torch like generated images).
        cache_file: the ``.safetensors`` cache (``None``: no cache).
        batch_size: images per CLIP forward.
    """

    keys = [cache_key(p) for p in paths]
    fingerprint = towers.fingerprint()
    known: dict[str, torch.Tensor] = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:  # a cache is never trusted: anything unreadable is recomputed
            with safe_open(str(cache_file), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("fingerprint") == fingerprint:
                table = load_file(str(cache_file))["embeddings"]
                if not bool(torch.isfinite(table).all()):
                    raise ValueError("NaN or infinite embeddings")
                known = dict(zip(json.loads(meta["keys"]), table, strict=True))
            else:
                logger.info("%s: computed with another CLIP, recomputing", cache_file)
        except Exception as err:  # noqa: BLE001 - SafetensorError, KeyError, JSON, lengths
            logger.warning("%s: unreadable cache (%s), recomputing", cache_file, err)
            known = {}
    todo = list(dict.fromkeys(k for k in keys if k not in known))
    if todo:
        logger.info("embedding %d covers with CLIP (%d cached)", len(todo), len(keys) - len(todo))
        by_key = dict(zip(keys, paths, strict=True))
        device = towers.model.visual_projection.weight.device
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            arrays = [np.asarray(load_image(by_key[k])) for k in chunk]
            shapes = {a.shape for a in arrays}
            with torch.no_grad():
                if len(shapes) == 1:
                    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
                    emb = towers.image_embeds(x.to(device)).cpu()  # (b, E)
                else:  # mixed sizes: one at a time
                    emb = torch.cat(
                        [
                            towers.image_embeds(
                                torch.from_numpy(a)
                                .permute(2, 0, 1)[None]
                                .float()
                                .div(255.0)
                                .to(device)
                            ).cpu()
                            for a in arrays
                        ]
                    )
            known.update(zip(chunk, emb, strict=True))
        if cache_file is not None:
            all_keys = list(known)
            with atomic_path(cache_file) as tmp:
                save_file(
                    {"embeddings": torch.stack([known[k] for k in all_keys]).contiguous()},
                    str(tmp),
                    metadata={"fingerprint": fingerprint, "keys": json.dumps(all_keys)},
                )
    return torch.stack([known[k] for k in keys]).float()  # (N, E)
