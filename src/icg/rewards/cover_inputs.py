"""What the preference model reads of a cover, computed from pixels, differentiably.

`icg.models.preference.PreferenceModel` takes one image-input row per cover: the L2-normalised
CLIP image embedding, followed (``cover_encoder="conv"``) by the cover's pixels resized to
``pixel_size`` or (``"patches"``) by CLIP's per-patch tokens. `CoverInputs` computes that row from
images ``(B, 3, H, W)`` in [0, 1]; the training cache (`icg.rewards.clip.embed_files`) and the
reward both go through it, so the two agree and gradients reach the pixels. It looks like
`ClipTowers` to the code that embeds covers (``image_embeds``, ``embed_dim``, ``fingerprint``,
``model``, ``text_embeds``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from icg.models.preference import COVER_ENCODERS, power_spectrum_bins
from icg.rewards.clip import ClipTowers, clip_preprocess


def resize_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, H, W)`` → ``(B, 3, size, size)``: antialiased bilinear, differentiable."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


class CoverInputs(nn.Module):
    """The preference model's image input ``(B, embed_dim)`` of images ``(B, 3, H, W)``.

    Args:
        towers: the frozen CLIP.
        cover_encoder: ``"clip"`` (the embedding alone), ``"conv"`` (+ pixels), ``"patches"``
            (+ patch tokens) or ``"spectrum"`` (+ power spectrum bins).
        pixel_size: ``"conv"``, ``"spectrum"``: side of the pixel input.
        patch_layer: ``"patches"``: index into CLIP's vision hidden states (``-1``: the last).
        bands, orientations: ``"spectrum"``: its bins.
    """

    def __init__(
        self,
        towers: ClipTowers,
        cover_encoder: str = "clip",
        pixel_size: int = 64,
        patch_layer: int = -1,
        bands: int = 12,
        orientations: int = 8,
    ) -> None:
        super().__init__()
        if cover_encoder not in COVER_ENCODERS:
            raise ValueError(
                f"cover_encoder: expected one of {COVER_ENCODERS}, got {cover_encoder!r}"
            )
        if pixel_size < 8:
            raise ValueError(f"pixel_size: expected >= 8, got {pixel_size}")
        if bands < 1 or orientations < 1:
            raise ValueError(f"spectrum_bins: expected two values >= 1, got {bands, orientations}")
        self.towers = towers
        self.cover_encoder = cover_encoder
        self.pixel_size = pixel_size
        self.patch_layer = patch_layer
        self.bands = bands
        self.orientations = orientations

    @classmethod
    def for_model(cls, towers: ClipTowers, config) -> CoverInputs:
        """The inputs a saved `PreferenceModel` config reads (old configs: ``"clip"``)."""
        return cls(
            towers,
            getattr(config, "cover_encoder", "clip"),
            getattr(config, "pixel_size", 32),
            getattr(config, "patch_layer", -1),
            getattr(config, "spectrum_bands", 12),
            getattr(config, "spectrum_orientations", 8),
        )

    # ---- what embed_files and the rewards use of a ClipTowers -------------------------------
    @property
    def model(self) -> nn.Module:
        """The CLIP model (its weights' device is where images go)."""
        return self.towers.model

    @property
    def name_or_path(self) -> str | None:
        return self.towers.name_or_path

    @property
    def patch_shape(self) -> tuple[int, int]:
        """``(tokens, width)`` of CLIP's vision hidden states (CLS included)."""
        vision = self.towers.model.config.vision_config
        tokens = (int(vision.image_size) // int(vision.patch_size)) ** 2 + 1
        return tokens, int(vision.hidden_size)

    @property
    def embed_dim(self) -> int:
        extra = 0
        if self.cover_encoder == "conv":
            extra = 3 * self.pixel_size**2
        elif self.cover_encoder == "patches":
            tokens, width = self.patch_shape
            extra = tokens * width
        elif self.cover_encoder == "spectrum":
            extra = self.bands * self.orientations
        return self.towers.embed_dim + extra

    def fingerprint(self) -> str:
        """The CLIP's fingerprint, unchanged for ``"clip"`` (old caches stay valid), else
        hashed with the input layout."""
        base = self.towers.fingerprint()
        if self.cover_encoder == "clip":
            return base
        spec = (
            f"{base}|{self.cover_encoder}|{self.pixel_size}|{self.patch_layer}|{self.bands}"
            f"|{self.orientations}"
        )
        return hashlib.sha1(spec.encode()).hexdigest()[:16]

    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """The CLIP's text embeddings ``(B, E)`` (comparable with the first ``E`` columns)."""
        return self.towers.text_embeds(texts)

    def train(self, mode: bool = True) -> CoverInputs:
        """Stays in eval mode: the CLIP is frozen."""
        super().train(False)
        return self

    # ---- the input row -------------------------------------------------------------------------
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Image inputs ``(B, embed_dim)`` of images ``(B, 3, H, W)`` in [0, 1]: the normalised
        CLIP embedding ``(B, E)``, then the flattened extra input."""
        if self.cover_encoder == "clip":
            return self.towers.image_embeds(images)  # (B, E)
        clip = self.towers.model
        images = images.to(clip.visual_projection.weight.dtype)
        if self.cover_encoder == "conv":
            emb = self.towers.image_embeds(images)  # (B, E)
            extra = resize_pixels(images, self.pixel_size).flatten(1)  # (B, 3 * s * s)
        elif self.cover_encoder == "spectrum":
            emb = self.towers.image_embeds(images)  # (B, E)
            pixels = resize_pixels(images, self.pixel_size)  # (B, 3, s, s)
            extra = power_spectrum_bins(pixels, self.bands, self.orientations)  # (B, K)
        else:
            x = clip_preprocess(images, self.towers.preprocess)  # (B, 3, h, w)
            out = clip.vision_model(pixel_values=x, output_hidden_states=True)
            emb = F.normalize(clip.visual_projection(out.pooler_output), dim=-1)  # (B, E)
            extra = out.hidden_states[self.patch_layer].flatten(1)  # (B, T * D)
        return torch.cat([emb, extra.to(emb.dtype)], -1)
