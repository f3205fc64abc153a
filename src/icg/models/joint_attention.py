"""Decoupled ICG attention for joint-attention transformers (SD3's MMDiT, FLUX's double blocks).

In a joint-attention block the image tokens and the text tokens attend to each other in one
sequence; the layer returns ``(image_out, text_out)``. ICG adds a second attention of the image
queries over the ICG tokens, with its own keys and values, and adds its output to the image
stream, the way IP-Adapter does for FLUX and SD3 (Ye et al. 2023, Sec. 3.2; diffusers'
``FluxIPAdapterAttnProcessor``, InstantX's SD3 IP-Adapter):

    image_out = base_image_out + scale * W_out · Attn(norm_q(q), norm_k(to_k_icg(c)), to_v_icg(c))

``W_out`` is the layer's own output projection without its bias (by linearity, the same as
adding the branch before ``to_out`` as the UNet processor does). The text stream is untouched.
The base output is computed by the layer's original processor itself (whatever attention
backend, fused projections or rotary embedding it uses), so with ``to_v_icg`` at zero (its
initial value), no tokens or scale 0, the layer output is bit-for-bit the base output.

The ICG tokens travel as ``joint_attention_kwargs={"icg_tokens": c}``; the image queries carry
no rotary embedding in the ICG branch (the tokens have no position), as in diffusers' FLUX
IP-Adapter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from icg.models.attention import ICGAttnWeights


def joint_attention_layers(transformer: nn.Module) -> dict[str, int]:
    """The transformer's joint (image + text) attention layers, ``{processor name: inner dim}``.

    A joint layer is one with projections for the text stream (``add_k_proj``): every block of
    SD3/SD3.5 (not SD3.5's image-only ``attn2``) and FLUX's double-stream blocks (not its
    single-stream blocks, where text and image share one projection, as in diffusers' FLUX
    IP-Adapter).
    """
    layers = {}
    for name in transformer.attn_processors:
        module = transformer.get_submodule(name.removesuffix(".processor"))
        if getattr(module, "add_k_proj", None) is not None:
            layers[name] = int(module.to_q.out_features)
    return layers


def context_dim(attn: nn.Module) -> int:
    """Width of the text states a joint attention layer reads (``add_k_proj``'s input)."""
    return int(attn.add_k_proj.in_features)


class JointICGAttnProcessor:
    """A joint-attention layer's original processor plus a decoupled ICG branch on the image stream.

    A plain callable like diffusers' processors; its weights live in an ``ICGAttnWeights`` owned
    by the adapter, so the transformer's own ``state_dict`` stays untouched.

    Args:
        inner: the layer's original processor (restored when the adapter is removed).
        weights: this layer's ``to_k_icg`` / ``to_v_icg``.
        scale: weight of the ICG branch.
    """

    def __init__(self, inner, weights: ICGAttnWeights, scale: float = 1.0) -> None:
        self.inner = inner
        self.weights = weights
        self.scale = scale

    def __call__(
        self, attn: nn.Module, hidden_states: torch.Tensor, *args, icg_tokens=None, **kwargs
    ):
        """Run the original processor, then add the ICG branch ``(B, N, dim)`` to its image output.

        ``icg_tokens``: ``(B, K', token_dim)`` or ``None`` (then the layer is the base layer).
        """
        out = self.inner(attn, hidden_states, *args, **kwargs)
        if icg_tokens is None or self.scale == 0:
            return out
        if not isinstance(out, tuple):
            raise ValueError(
                f"{type(attn).__name__}: the ICG joint processor expects an image + text layer "
                "returning (image_out, text_out); this layer returned one tensor"
            )
        extra = self.icg_branch(attn, hidden_states, icg_tokens)  # (B, N, dim)
        return (out[0] + self.scale * extra.to(out[0].dtype), *out[1:])

    def icg_branch(
        self, attn: nn.Module, hidden_states: torch.Tensor, icg_tokens: torch.Tensor
    ) -> torch.Tensor:
        """``W_out · Attn(q_image, k_icg, v_icg)`` for image states ``(B, N, dim)``."""
        batch = hidden_states.shape[0]
        if icg_tokens.shape[0] != batch:
            raise ValueError(
                f"icg_tokens has batch {icg_tokens.shape[0]}, expected {batch} "
                "(the transformer batch, including the classifier-free-guidance half)"
            )
        query = attn.to_q(hidden_states)  # (B, N, inner)
        query = query.unflatten(-1, (attn.heads, -1))  # (B, N, H, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        tokens = icg_tokens.to(dtype=self.weights.to_k_icg.weight.dtype)
        key = self.weights.to_k_icg(tokens).to(query.dtype).unflatten(-1, (attn.heads, -1))
        value = self.weights.to_v_icg(tokens).to(query.dtype).unflatten(-1, (attn.heads, -1))
        if getattr(attn, "norm_added_k", None) is not None:  # keys scaled as the text keys are
            key = attn.norm_added_k(key)  # (B, K', H, d)
        states = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        )  # (B, H, N, d)
        states = states.transpose(1, 2).flatten(2, 3).to(query.dtype)  # (B, N, inner)
        out_proj = attn.to_out[0]
        weight = getattr(out_proj, "base_layer", out_proj).weight  # peft LoRA: its base layer
        return F.linear(states, weight)  # (B, N, dim)
