"""The base model's text conditioning, one object for every family: states, pooled, time ids.

Training encodes each prompt once, the way the family's stock diffusers pipeline encodes it for
drawing, so stage A and stage B condition the denoiser exactly as inference does:

======  =====================================================  ================================
family  what a prompt becomes                                  unconditional (CFG, text dropout)
======  =====================================================  ================================
sd      the CLIP tower's last hidden states ``(L, C)``          the empty prompt
sdxl    both CLIP towers' penultimate states, concatenated     zeros when the pipeline forces
        ``(L, C1 + C2)``, the second tower's pooled             them for an empty negative prompt
        embedding ``(P,)`` and the added time ids ``(6,)``      (``force_zeros_for_empty_prompt``)
        (``StableDiffusionXLPipeline.encode_prompt``)
sd3     CLIP-L + CLIP-G states padded and joined with T5's,    the empty prompt
        the two pooled embeddings ``(P,)``
flux    T5's states, CLIP's pooled embedding ``(P,)``          the empty prompt
======  =====================================================  ================================

The same prompt goes to every text encoder (the stock pipelines' ``prompt_2 = prompt_3 = prompt``),
so whatever the prompt says (the title, a user's taste words) reaches CLIP and T5 alike. SD1.x
fills only ``states``, and its denoiser is called exactly as before this object existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from icg.models.backbones import backbone_of, denoiser_of

FLOW_FAMILIES = ("sd3", "flux")
FAMILIES = ("sd", "sdxl", *FLOW_FAMILIES)


def base_family(pipe) -> str:
    """The text-conditioning family of a diffusers pipeline: ``sd`` (SD1.x/2.x), ``sdxl`` (a UNet
    with ``text_time`` added conditioning), ``sd3`` or ``flux``."""
    backbone = backbone_of(pipe)
    if backbone.name != "unet":
        return backbone.name
    unet = denoiser_of(pipe)
    return "sdxl" if unet.config.get("addition_embed_type") == "text_time" else "sd"


def _stack(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.stack(list(parts))


def _cat(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(list(parts))


@dataclass(frozen=True)
class TextConditioning:
    """A prompt's (or a batch's) conditioning of the base denoiser.

    Args:
        states: text hidden states ``(L, C)``, or ``(B, L, C)`` for a batch.
        pooled: pooled text embedding ``(P,)`` / ``(B, P)`` (SDXL, SD3, FLUX; ``None`` for SD1.x).
        time_ids: SDXL's added time ids ``(6,)`` / ``(B, 6)``: original size, crop, target size.
    """

    states: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    @classmethod
    def stack(cls, rows: Sequence[TextConditioning]) -> TextConditioning:
        """A batch ``(B, ...)`` from one-prompt conditionings."""
        return cls(
            torch.stack([r.states for r in rows]),  # (B, L, C)
            _stack([r.pooled for r in rows]),  # (B, P)
            _stack([r.time_ids for r in rows]),  # (B, 6)
        )

    @classmethod
    def cat(cls, batches: Sequence[TextConditioning]) -> TextConditioning:
        """Batches joined along the batch axis (CFG's ``[uncond, cond]`` layout)."""
        return cls(
            torch.cat([b.states for b in batches]),
            _cat([b.pooled for b in batches]),
            _cat([b.time_ids for b in batches]),
        )

    def expand(self, n: int) -> TextConditioning:
        """One prompt's conditioning repeated as a batch of ``n`` (a view, no copy)."""
        return TextConditioning(
            self.states.expand(n, *self.states.shape),
            None if self.pooled is None else self.pooled.expand(n, *self.pooled.shape),
            None if self.time_ids is None else self.time_ids.expand(n, *self.time_ids.shape),
        )

    def to(self, device=None, dtype: torch.dtype | None = None) -> TextConditioning:
        """On ``device``; floating tensors in ``dtype`` when given."""

        def move(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device=device, dtype=dtype)

        return TextConditioning(move(self.states), move(self.pooled), move(self.time_ids))

    def unet_kwargs(self) -> dict:
        """The UNet's ``added_cond_kwargs`` (SDXL's pooled text and time ids); ``{}`` for SD1.x."""
        if self.pooled is None or self.time_ids is None:
            return {}
        return {"added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids}}


def as_conditioning(text: torch.Tensor | TextConditioning) -> TextConditioning:
    """``text`` as a `TextConditioning` (a bare states tensor is SD1.x's conditioning)."""
    return text if isinstance(text, TextConditioning) else TextConditioning(text)


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, text: str) -> torch.Tensor:
    """SD1.x's text states ``(L, C_text)`` of one prompt, padded as its pipeline pads them."""
    ids = tokenizer(
        [text],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(text_encoder.device)
    return text_encoder(ids)[0][0]  # (L, C_text)


class PromptEncoder:
    """Encodes prompts with a frozen base pipeline as its own ``__call__`` does (module doc).

    Args:
        base: a diffusers SD1.x/2.x, SDXL, SD3 or FLUX pipeline.
        size: the side in pixels of the images trained on (SDXL's time ids record it).
    """

    def __init__(self, base, size: int) -> None:
        self.base, self.size, self.family = base, size, base_family(base)

    @torch.no_grad()
    def __call__(self, prompt: str) -> TextConditioning:
        """One prompt's conditioning (unbatched)."""
        base, family = self.base, self.family
        if family == "sd":
            return TextConditioning(encode_prompt(base.tokenizer, base.text_encoder, prompt))
        device = denoiser_of(base).device
        if family == "sdxl":
            states, _, pooled, _ = base.encode_prompt(
                prompt, device=device, do_classifier_free_guidance=False
            )
            s = self.size  # original size, crop top-left, target size (SDXL, Sec. 2.2)
            time_ids = torch.tensor([s, s, 0, 0, s, s], dtype=states.dtype, device=device)
            return TextConditioning(states[0], pooled[0], time_ids)
        if family == "sd3":
            states, _, pooled, _ = base.encode_prompt(
                prompt, None, None, device=device, do_classifier_free_guidance=False
            )
        else:
            states, pooled, _ = base.encode_prompt(prompt, None, device=device)
        return TextConditioning(states[0], pooled[0])

    def unconditional(self) -> TextConditioning:
        """What the stock pipeline's classifier-free guidance feeds its unconditional half when
        no negative prompt is given (also the text of stage A's dropped rows)."""
        empty = self("")
        if self.family == "sdxl" and self.base.config.get("force_zeros_for_empty_prompt", False):
            return TextConditioning(
                torch.zeros_like(empty.states), torch.zeros_like(empty.pooled), empty.time_ids
            )
        return empty
