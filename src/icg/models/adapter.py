"""CoverAdapter: the connector from item features to UNet tokens, plus decoupled cross-attention.

ICG (EMNLP 2025, Sec. 3.3) bridges the MLLM and the diffusion model with an adapter: the
personalized context ``C (B, K, D)`` is mapped to ``K'`` tokens of width ``token_dim`` and injected
into every cross-attention layer of the UNet as a second, decoupled attention branch
(IP-Adapter style, Ye et al. 2023, Sec. 3.2). The adapter is zero-initialised (``to_v_icg = 0``)
so that an untrained adapter leaves the base pipeline's output bit-for-bit unchanged.

Cross-attention lets the tokens say *what* is drawn where, but a base model whose text
conditioning never controlled style (brightness, saturation, layout: where taste lives) gives
that branch no lever on it. With ``global_conditioning`` the adapter also adds a projection of
the mean ICG token to the UNet's timestep embedding, the way class-conditional diffusion models
condition every ResNet block (Dhariwal & Nichol 2021, Sec. 3.1; Peebles & Xie 2023, adaLN). The
projection is zero-initialised and has no bias, so zero tokens (CFG's unconditional branch)
add nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from icg.artifacts import CheckedLoadMixin
from icg.models.attention import (
    ICG_TOKENS_KWARG,
    ICGAttnProcessor,
    ICGAttnWeights,
    PassthroughProcessor,
)

logger = logging.getLogger(__name__)


def layer_key(processor_name: str) -> str:
    """Module key of a UNet attention layer: ``down_blocks.1...attn2.processor`` → ``down_blocks_1..._attn2``."""
    return processor_name.removesuffix(".processor").replace(".", "_")


def cross_attention_layers(unet: nn.Module) -> dict[str, int]:
    """The UNet's cross-attention layers, ``{processor name: inner dim}``, in processor order."""
    layers = {}
    for name in unet.attn_processors:
        module = unet.get_submodule(name.removesuffix(".processor"))
        if getattr(module, "is_cross_attention", False):
            layers[name] = int(module.inner_dim)
    return layers


def time_embedding_dim(unet: nn.Module) -> int:
    """Width of a diffusers UNet's timestep embedding (``unet.time_embedding``'s output)."""
    embedding = getattr(unet, "time_embedding", None)
    if embedding is None or not hasattr(embedding, "linear_2"):
        raise ValueError("unet: global conditioning needs a diffusers UNet with a time_embedding")
    return int(embedding.linear_2.out_features)


class CoverAdapter(CheckedLoadMixin, ModelMixin, ConfigMixin):
    """Connector ``(B, K, D) → (B, K', token_dim)`` plus one ``ICGAttnWeights`` per cross-attn layer.

    Build it for a UNet with :meth:`from_unet`; inject with :meth:`install` and undo with
    :meth:`remove`. Each layer's ``to_k_icg`` maps ``token_dim`` to that layer's own inner dim, so
    UNets whose blocks use different widths or ``cross_attention_dim`` need nothing special.

    Args:
        feature_dim: ``D``, width of the item features (the MLLM hidden size).
        num_feature_tokens: ``K``, number of meta tokens.
        token_dim: width of the ICG tokens (by default the UNet's ``cross_attention_dim``).
        layers: ``{processor name: inner dim}`` of the cross-attention layers to inject.
        num_tokens: ``K'``, number of ICG tokens (``None``: same as ``K``).
        hidden_dim: width of the connector MLP (``None``: ``max(D, token_dim)``).
        scale: weight of the ICG branch in every layer.
        base_model: name or path of the base diffusion model, recorded for loading.
        base_prompt: how a title becomes the base model's text prompt (``{title}`` is replaced);
            stage A, stage B and the pipeline all prompt the base model this way.
        time_embed_dim: width of the UNet's timestep embedding to condition globally (``None``:
            cross-attention only).
    """

    @register_to_config
    def __init__(
        self,
        feature_dim: int,
        num_feature_tokens: int,
        token_dim: int,
        layers: dict[str, int],
        num_tokens: int | None = None,
        hidden_dim: int | None = None,
        scale: float = 1.0,
        base_model: str | None = None,
        base_prompt: str = "{title}",
        time_embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("layers: expected at least one cross-attention layer, got none")
        hidden = hidden_dim or max(feature_dim, token_dim)
        self.proj = nn.Sequential(
            nn.LayerNorm(feature_dim),
            nn.Linear(feature_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, token_dim),
        )
        self.norm = nn.LayerNorm(token_dim)
        out_tokens = num_tokens or num_feature_tokens
        self.token_mix = (
            nn.Linear(num_feature_tokens, out_tokens) if out_tokens != num_feature_tokens else None
        )
        self.attn_layers = nn.ModuleDict(
            {
                layer_key(name): ICGAttnWeights(dim, token_dim)
                for name, dim in sorted(layers.items())
            }
        )
        self.time_cond = None
        if time_embed_dim is not None:
            self.time_cond = nn.Linear(token_dim, time_embed_dim, bias=False)
            nn.init.zeros_(self.time_cond.weight)
        self._scale = scale
        self._hooks: list = []
        self._pending_tokens: torch.Tensor | None = None
        self._original_processors: dict | None = None
        self._installed_processors: dict[str, ICGAttnProcessor] = {}

    def prompts(self, titles: Sequence[str]) -> list[str]:
        """The base model's text prompts for ``titles`` (``base_prompt`` filled in)."""
        return [self.config.base_prompt.replace("{title}", t) for t in titles]

    @classmethod
    def from_unet(
        cls,
        unet: nn.Module,
        feature_dim: int,
        num_feature_tokens: int,
        num_tokens: int | None = None,
        token_dim: int | None = None,
        scale: float = 1.0,
        base_model: str | None = None,
        base_prompt: str = "{title}",
        global_conditioning: bool = False,
    ) -> CoverAdapter:
        """A fresh adapter shaped for ``unet``; ``to_k_icg`` starts from the text ``to_k`` where widths agree.
        ``global_conditioning`` also conditions the UNet's timestep embedding (module doc)."""
        layers = cross_attention_layers(unet)
        if not layers:
            raise ValueError("unet: expected a UNet with cross-attention layers, found none")
        if token_dim is None:
            first = unet.get_submodule(next(iter(layers)).removesuffix(".processor"))
            token_dim = int(first.to_k.in_features)
        adapter = cls(
            feature_dim=feature_dim,
            num_feature_tokens=num_feature_tokens,
            token_dim=token_dim,
            layers=layers,
            num_tokens=num_tokens,
            scale=scale,
            base_model=base_model,
            base_prompt=base_prompt,
            time_embed_dim=time_embedding_dim(unet) if global_conditioning else None,
        )
        adapter.copy_key_projections(unet, "to_k")
        return adapter.to(device=unet.device)

    @torch.no_grad()
    def copy_key_projections(self, model: nn.Module, source: str) -> None:
        """Start each layer's ICG key projection from the base layer's ``source`` projection
        where the shapes agree (IP-Adapter's initialisation, Ye et al. 2023, Sec. 3.2); the
        value projections stay zero, so the adapter still adds nothing."""
        for name in self.config.layers:
            attn = model.get_submodule(name.removesuffix(".processor"))
            weights = self.attn_layers[layer_key(name)]
            base = getattr(attn, source).weight
            if base.shape == weights.to_k_icg.weight.shape:
                weights.to_k_icg.weight.copy_(base)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map personalized context ``(B, K, D)`` to ICG tokens ``(B, K', token_dim)``."""
        tokens = self.norm(self.proj(features))  # (B, K, T)
        if self.token_mix is not None:
            tokens = self.token_mix(tokens.transpose(1, 2)).transpose(1, 2)  # (B, K', T)
        return tokens

    @property
    def scale(self) -> float:
        """Weight of the ICG branch (applies at once to installed processors)."""
        return self._scale

    def set_scale(self, scale: float) -> None:
        """Set the weight of the ICG branch in every installed processor."""
        self._scale = float(scale)
        for processor in self._installed_processors.values():
            processor.scale = self._scale

    @property
    def is_installed(self) -> bool:
        """Whether the adapter's processors are installed on a UNet."""
        return self._original_processors is not None

    def install(self, unet: nn.Module) -> None:
        """Install ICG processors on the cross-attention layers of ``unet``.

        Other layers keep their original processor, wrapped so that they ignore ``icg_tokens``.
        Pass the tokens as ``unet(..., cross_attention_kwargs={"icg_tokens": tokens})``.
        """
        if self.is_installed:
            raise RuntimeError("CoverAdapter is already installed; call remove(unet) first")
        found = cross_attention_layers(unet)
        expected = dict(self.config.layers)
        if found != expected:
            missing = sorted(set(expected) - set(found))[:3]
            raise ValueError(
                f"unet: cross-attention layers do not match the adapter (adapter expects {len(expected)}, "
                f"unet has {len(found)}; first mismatches: {missing}). Was the adapter built for this base?"
            )
        originals = dict(unet.attn_processors)
        processors = {}
        self._installed_processors = {}
        for name, original in originals.items():
            if name in expected:
                processor = ICGAttnProcessor(self.attn_layers[layer_key(name)], scale=self._scale)
                self._installed_processors[name] = processor
                processors[name] = processor
            else:
                processors[name] = PassthroughProcessor(original)
        unet.set_attn_processor(processors)
        self._original_processors = originals
        if self.time_cond is not None:
            self._install_time_conditioning(unet)

    def _install_time_conditioning(self, unet: nn.Module) -> None:
        """Hooks: the UNet's call hands its ``icg_tokens`` to its timestep embedding's output
        (one UNet call at a time, as every caller here makes them; `icg serve` draws on one
        worker thread)."""
        if time_embedding_dim(unet) != self.config.time_embed_dim:
            raise ValueError(
                f"unet: timestep embedding of width {time_embedding_dim(unet)}, but the adapter "
                f"conditions width {self.config.time_embed_dim}. Was it built for this base?"
            )
        self._hook_time_conditioning(unet, unet.time_embedding, "cross_attention_kwargs")

    def _hook_time_conditioning(self, model: nn.Module, embedding: nn.Module, kwarg: str) -> None:
        """``model``'s call hands the ``icg_tokens`` in its ``kwarg`` dict to ``embedding``'s
        output, which gains ``scale · time_cond(mean token)`` (zero at init)."""

        def take_tokens(module, args, kwargs):
            extra = kwargs.get(kwarg) or {}
            self._pending_tokens = extra.get(ICG_TOKENS_KWARG)

        def add_tokens(module, args, emb):
            tokens, self._pending_tokens = self._pending_tokens, None
            if tokens is None:
                return emb
            shift = self.time_cond(tokens.mean(1).to(self.time_cond.weight.dtype))  # (B, E)
            return emb + self._scale * shift.to(emb.dtype)

        self._hooks = [
            model.register_forward_pre_hook(take_tokens, with_kwargs=True),
            embedding.register_forward_hook(add_tokens),
        ]

    def remove(self, unet: nn.Module) -> None:
        """Restore the processors ``unet`` had before :meth:`install`."""
        if self._original_processors is None:
            raise RuntimeError("CoverAdapter is not installed")
        unet.set_attn_processor(dict(self._original_processors))
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._pending_tokens = [], None
        self._original_processors = None
        self._installed_processors = {}
