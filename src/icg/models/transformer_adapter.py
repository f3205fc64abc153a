"""JointCoverAdapter: the ICG adapter for flow-matching joint-attention transformers (SD3, FLUX).

The connector is the `CoverAdapter`'s (features ``(B, K, D)`` → ICG tokens ``(B, K', T)``); what
differs is where the tokens go:

* every joint attention layer gets a decoupled ICG branch on its image stream
  (`icg.models.joint_attention`), installed with ``transformer.set_attn_processor``;
* with ``global_conditioning``, a projection of the mean ICG token is added to the output of the
  transformer's ``time_text_embed`` (timestep + pooled text), the embedding that drives every
  block's adaLN modulation, as the UNet adapter adds it to the timestep embedding (Peebles &
  Xie 2023, adaLN; Esser et al. 2024, Sec. 4 for SD3's pooled-text conditioning).

Both branches start at zero (``to_v_icg = 0``, ``time_cond = 0``, no bias), so an untrained
adapter, or zero tokens (CFG's unconditional half), leaves the transformer's output bit-for-bit
unchanged. The tokens travel as ``transformer(..., joint_attention_kwargs={"icg_tokens": c})``.
"""

from __future__ import annotations

from torch import nn

from icg.models.adapter import CoverAdapter, layer_key
from icg.models.attention import PassthroughProcessor
from icg.models.joint_attention import JointICGAttnProcessor, context_dim, joint_attention_layers

TOKENS_KWARGS = "joint_attention_kwargs"


def pooled_embedding_dim(transformer: nn.Module) -> int:
    """Width of a diffusers DiT's timestep + pooled-text embedding (``time_text_embed``'s output)."""
    embed = getattr(transformer, "time_text_embed", None)
    linear = getattr(getattr(embed, "timestep_embedder", None), "linear_2", None)
    if linear is None:
        raise ValueError(
            f"{type(transformer).__name__}: global conditioning needs a transformer with a "
            "time_text_embed (SD3Transformer2DModel, FluxTransformer2DModel)"
        )
    return int(linear.out_features)


class JointCoverAdapter(CoverAdapter):
    """`CoverAdapter` for joint-attention transformers; same config, weights and save format.

    Build it with :meth:`from_transformer`; :meth:`install` / :meth:`remove` as for the UNet
    adapter. ``config.layers`` maps each joint layer's processor name to its inner dim;
    ``config.time_embed_dim`` is the width of ``time_text_embed`` when conditioning globally.
    """

    @classmethod
    def from_unet(cls, unet: nn.Module, *args, **kwargs) -> CoverAdapter:
        """Not for UNets: use `CoverAdapter.from_unet` (or `icg.models.backbones.build_adapter`)."""
        raise TypeError(
            "JointCoverAdapter is for joint-attention transformers: use from_transformer"
        )

    @classmethod
    def from_transformer(
        cls,
        transformer: nn.Module,
        feature_dim: int,
        num_feature_tokens: int,
        num_tokens: int | None = None,
        token_dim: int | None = None,
        scale: float = 1.0,
        base_model: str | None = None,
        base_prompt: str = "{title}",
        global_conditioning: bool = False,
    ) -> JointCoverAdapter:
        """A fresh adapter shaped for ``transformer``. ICG tokens default to the width of the text
        states the joint layers read, and ``to_k_icg`` starts from the text stream's
        ``add_k_proj`` where widths agree (the tokens start out read like text)."""
        layers = joint_attention_layers(transformer)
        if not layers:
            raise ValueError(
                f"{type(transformer).__name__}: expected joint attention layers (add_k_proj), found none"
            )
        first = transformer.get_submodule(next(iter(layers)).removesuffix(".processor"))
        adapter = cls(
            feature_dim=feature_dim,
            num_feature_tokens=num_feature_tokens,
            token_dim=token_dim or context_dim(first),
            layers=layers,
            num_tokens=num_tokens,
            scale=scale,
            base_model=base_model,
            base_prompt=base_prompt,
            time_embed_dim=pooled_embedding_dim(transformer) if global_conditioning else None,
        )
        adapter.copy_key_projections(transformer, "add_k_proj")
        return adapter.to(device=transformer.device)

    def install(self, transformer: nn.Module) -> None:
        """Wrap the processors of the joint layers of ``transformer`` with the ICG branch.

        Other layers keep their processor, wrapped so that they ignore ``icg_tokens``. Pass the
        tokens as ``transformer(..., joint_attention_kwargs={"icg_tokens": tokens})``.
        """
        if self.is_installed:
            raise RuntimeError("JointCoverAdapter is already installed; call remove() first")
        found = joint_attention_layers(transformer)
        expected = dict(self.config.layers)
        if found != expected:
            missing = sorted(set(expected) ^ set(found))[:3]
            raise ValueError(
                f"{type(transformer).__name__}: joint attention layers do not match the adapter "
                f"(adapter expects {len(expected)}, transformer has {len(found)}; first "
                f"mismatches: {missing}). Was the adapter built for this base?"
            )
        if (
            self.time_cond is not None
            and pooled_embedding_dim(transformer) != self.config.time_embed_dim
        ):
            raise ValueError(
                f"{type(transformer).__name__}: time_text_embed of width "
                f"{pooled_embedding_dim(transformer)}, but the adapter conditions width "
                f"{self.config.time_embed_dim}. Was it built for this base?"
            )
        originals = dict(transformer.attn_processors)
        processors = {}
        self._installed_processors = {}
        for name, original in originals.items():
            if name in expected:
                weights = self.attn_layers[layer_key(name)]
                processor = JointICGAttnProcessor(original, weights, scale=self._scale)
                self._installed_processors[name] = processor
                processors[name] = processor
            else:
                processors[name] = PassthroughProcessor(original)
        transformer.set_attn_processor(processors)
        self._original_processors = originals
        if self.time_cond is not None:
            self._install_time_conditioning(transformer)

    def _install_time_conditioning(self, transformer: nn.Module) -> None:
        """Hooks: the transformer's call hands its ``icg_tokens`` to ``time_text_embed``'s output
        (one transformer call at a time, as every caller here makes them)."""

        self._hook_time_conditioning(transformer, transformer.time_text_embed, TOKENS_KWARGS)
