"""Decoupled cross-attention processors for the ICG adapter (ICG, EMNLP 2025, Sec. 3.3).

The UNet's cross-attention layers keep attending to the text states exactly as before; a
second attention over the ICG tokens shares the query and adds its output, scaled:

    out = to_out( Attn(q, K_text, V_text) + scale * Attn(q, to_k_icg(c), to_v_icg(c)) )

The ICG tokens travel explicitly through ``cross_attention_kwargs={"icg_tokens": c}``; they are
never concatenated to the text states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

ICG_TOKENS_KWARG = "icg_tokens"


class ICGAttnWeights(nn.Module):
    """The trainable keys and values of one layer's ICG branch (owned by the ``CoverAdapter``).

    Args:
        hidden_size: the attention layer's inner dimension (``attn.inner_dim``).
        token_dim: width of the ICG tokens produced by the connector.
    """

    def __init__(self, hidden_size: int, token_dim: int) -> None:
        super().__init__()
        self.to_k_icg = nn.Linear(token_dim, hidden_size, bias=False)
        self.to_v_icg = nn.Linear(token_dim, hidden_size, bias=False)
        nn.init.zeros_(self.to_v_icg.weight)  # zero-init: the branch starts silent


class ICGAttnProcessor:
    """Cross-attention processor with a decoupled branch for ICG tokens.

    A plain callable (like diffusers' ``AttnProcessor2_0``); its weights live in an
    ``ICGAttnWeights`` module owned by the adapter, so installing it leaves the UNet's own
    ``state_dict`` untouched. The text branch reproduces ``AttnProcessor2_0`` operation for
    operation, so with ``to_v_icg`` at zero (its initial value), or no ICG tokens, the layer
    output is bit-for-bit the base output.

    Args:
        weights: this layer's ``to_k_icg`` / ``to_v_icg``.
        scale: weight of the ICG branch.
    """

    def __init__(self, weights: ICGAttnWeights, scale: float = 1.0) -> None:
        self.weights = weights
        self.scale = scale

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        icg_tokens: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Attend to the text states and, when given, to the ICG tokens ``(B, K', token_dim)``."""
        return self.forward(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, icg_tokens
        )

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        icg_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See ``__call__``."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, sequence_length, batch_size
            )
            attention_mask = attention_mask.view(
                batch_size, attn.heads, -1, attention_mask.shape[-1]
            )

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, N, d)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, L, d)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, L, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)  # (B, N, inner)

        if icg_tokens is not None:
            if icg_tokens.shape[0] != batch_size:
                raise ValueError(
                    f"icg_tokens has batch {icg_tokens.shape[0]}, expected {batch_size} "
                    "(the UNet batch, including the classifier-free-guidance half)"
                )
            tokens = icg_tokens.to(dtype=self.weights.to_k_icg.weight.dtype)
            icg_key = self.weights.to_k_icg(tokens).to(query.dtype)
            icg_value = self.weights.to_v_icg(tokens).to(query.dtype)
            icg_key = icg_key.view(batch_size, -1, attn.heads, head_dim).transpose(
                1, 2
            )  # (B, H, K', d)
            icg_value = icg_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            icg_states = F.scaled_dot_product_attention(
                query, icg_key, icg_value, dropout_p=0.0, is_causal=False
            )
            icg_states = icg_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
            hidden_states = hidden_states + self.scale * icg_states.to(query.dtype)  # (B, N, inner)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class PassthroughProcessor:
    """Wraps a layer's original processor and drops the ``icg_tokens`` keyword.

    Installed on the layers the adapter does not touch (self-attention), so the UNet can pass
    ``cross_attention_kwargs={"icg_tokens": ...}`` to every layer without diffusers warning that
    the keyword is unexpected. The original processor does all the work; ``inner`` is restored
    on removal.

    Args:
        inner: the original processor of the layer.
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(
        self, attn: Attention, hidden_states: torch.Tensor, *args, icg_tokens=None, **kwargs
    ):
        return self.inner(attn, hidden_states, *args, **kwargs)
