"""MetaTokenEncoder: item features from a frozen MLLM read out at K learnable meta tokens.

ICG (EMNLP 2025, Sec. 3.1) prompts an MLLM with the item title and reference image and appends
K learnable *meta tokens*; the last hidden states at those positions are the item features
``F (K, D)``. The MLLM stays frozen (optionally with peft LoRA); only the meta token embeddings
(and LoRA) train. The MLLM is not part of the saved weights: the config records its name/path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from icg.artifacts import CheckedLoadMixin, read_safetensors
from icg.models.mllm import load_mllm
from icg.models.paths import resolve_model_path

logger = logging.getLogger(__name__)

LORA_WEIGHTS_NAME = "mllm_lora.safetensors"
DEFAULT_PROMPT = "Describe a cover image for the item titled: {title}"


def build_messages(prompt: str, has_image: bool) -> list[dict]:
    """One user turn in the transformers chat format: optional image, then the prompt text."""
    content = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def relayout_with_meta(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_meta: int,
    pad_id: int,
    padding_side: str,
    token_types: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Append ``num_meta`` meta slots after each row's real tokens and re-pad on ``padding_side``.

    Args:
        input_ids: ``(B, L)`` padded by the processor (either side).
        attention_mask: ``(B, L)``, 1 on real tokens.
        num_meta: ``K``.
        pad_id: id written on padding and meta slots (meta slots get their embeddings replaced).
        padding_side: ``"left"`` or ``"right"``.
        token_types: optional ``(B, L)`` modality ids (Qwen2-VL's ``mm_token_type_ids``).

    Returns:
        ``(ids, mask, meta_mask, types)``, each ``(B, L' = max real length + K)``; ``meta_mask`` is
        True on the K meta slots of every row.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
    lengths = attention_mask.sum(1).tolist()
    batch, width = len(lengths), max(lengths) + num_meta
    ids = input_ids.new_full((batch, width), pad_id)
    mask = attention_mask.new_zeros((batch, width))
    meta_mask = torch.zeros((batch, width), dtype=torch.bool, device=input_ids.device)
    types = token_types.new_zeros((batch, width)) if token_types is not None else None
    for row, length in enumerate(lengths):
        real = attention_mask[row].bool()
        start = width - length - num_meta if padding_side == "left" else 0
        ids[row, start : start + length] = input_ids[row, real]
        if types is not None:
            types[row, start : start + length] = token_types[row, real]
        mask[row, start : start + length + num_meta] = 1
        meta_mask[row, start + length : start + length + num_meta] = True
    return ids, mask, meta_mask, types


class MetaTokenEncoder(CheckedLoadMixin, ModelMixin, ConfigMixin):
    """K learnable meta tokens read through a frozen image-text-to-text MLLM.

    Works with any transformers image-text-to-text model whose processor has a chat template
    (tested: Qwen2-VL, LLaVA). Attach the MLLM with :meth:`attach` (or load everything with
    :meth:`load`); the MLLM is held outside the module tree, so ``state_dict`` and
    ``save_pretrained`` contain only ``meta_tokens`` (LoRA, if any, goes to ``mllm_lora.safetensors``).

    Args:
        hidden_size: ``D``, the MLLM's text hidden size.
        num_meta_tokens: ``K``.
        mllm_name_or_path: name or path of the frozen MLLM, recorded for loading.
        prompt_template: text prompt, with ``{title}`` replaced by the item title.
        padding_side: where batches are padded (results do not depend on it).
        lora_rank: rank of an optional peft LoRA on the MLLM (0: none).
        lora_alpha: LoRA alpha.
        lora_target_modules: regex of the MLLM modules that get LoRA.
        init_std: standard deviation of the initial meta token embeddings.
        read_image: False never shows the reference image to the MLLM (the title-only
            ablation): ``forward`` then drops every image it is given.
    """

    @register_to_config
    def __init__(
        self,
        hidden_size: int,
        num_meta_tokens: int = 8,
        mllm_name_or_path: str | None = None,
        prompt_template: str = DEFAULT_PROMPT,
        padding_side: str = "left",
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_target_modules: str = r".*language_model.*\.(q_proj|v_proj)$",
        init_std: float = 0.02,
        read_image: bool = True,
    ) -> None:
        super().__init__()
        if "{title}" not in prompt_template:
            raise ValueError(
                f"prompt_template: expected a '{{title}}' field, got {prompt_template!r}"
            )
        self.meta_tokens = nn.Parameter(torch.randn(num_meta_tokens, hidden_size) * init_std)
        self.__dict__["mllm"] = None  # kept out of the module tree: never saved, never moved
        self.__dict__["processor"] = None

    # ---- attaching the frozen MLLM -------------------------------------------------------
    def attach(self, mllm: nn.Module, processor) -> MetaTokenEncoder:
        """Attach a frozen MLLM and its processor (adds LoRA if ``lora_rank > 0``)."""
        text_hidden = mllm.get_input_embeddings().embedding_dim
        if text_hidden != self.config.hidden_size:
            raise ValueError(
                f"mllm: hidden size {text_hidden} does not match the encoder's hidden_size "
                f"{self.config.hidden_size}"
            )
        mllm.requires_grad_(False)
        if self.config.lora_rank > 0:
            # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(
                r=self.config.lora_rank,
                lora_alpha=self.config.lora_alpha,
                target_modules=self.config.lora_target_modules,
            )
            mllm = inject_adapter_in_model(lora, mllm)
        self.__dict__["mllm"] = mllm
        self.__dict__["processor"] = processor
        return self

    @classmethod
    def load(
        cls,
        directory: str | Path,
        mllm: nn.Module | None = None,
        processor=None,
        torch_dtype: torch.dtype | None = None,
    ) -> MetaTokenEncoder:
        """Load saved meta tokens (and LoRA) and attach the MLLM the config records (or ``mllm``)."""

        encoder = cls.from_pretrained(directory)
        if mllm is None:
            name = encoder.config.mllm_name_or_path
            if name is None:
                raise ValueError(
                    f"{directory}: the config records no mllm_name_or_path; pass mllm="
                )
            mllm, loaded_processor = load_mllm(resolve_model_path(name), torch_dtype=torch_dtype)
            processor = processor or loaded_processor
        if processor is None:
            raise ValueError("processor: required when mllm is given")
        encoder.attach(mllm, processor)
        lora_file = Path(directory) / LORA_WEIGHTS_NAME
        if encoder.config.lora_rank > 0 and lora_file.is_file():
            # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
            from peft import set_peft_model_state_dict

            tensors, _ = read_safetensors(lora_file)  # ArtifactError: truncated, NaN
            set_peft_model_state_dict(encoder.mllm, tensors)
        return encoder

    def lora_parameters(self) -> list[nn.Parameter]:
        """The trainable LoRA parameters inside the MLLM (empty without LoRA)."""
        if self.mllm is None or self.config.lora_rank == 0:
            return []
        return [p for n, p in self.mllm.named_parameters() if "lora_" in n]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Meta tokens plus LoRA."""
        return [self.meta_tokens, *self.lora_parameters()]

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """Save config + meta tokens (and LoRA weights, if any); never the MLLM itself."""
        super().save_pretrained(save_directory, **kwargs)
        if self.config.lora_rank > 0 and self.mllm is not None:
            # import cost: peft takes seconds to import (16.8 s measured); only LoRA needs it
            from peft import get_peft_model_state_dict

            state = {
                k: v.detach().contiguous() for k, v in get_peft_model_state_dict(self.mllm).items()
            }
            save_file(state, str(Path(save_directory) / LORA_WEIGHTS_NAME))

    # ---- forward -------------------------------------------------------------------------
    def _require_mllm(self) -> None:
        if self.mllm is None or self.processor is None:
            raise RuntimeError(
                "MetaTokenEncoder has no MLLM: call attach(mllm, processor) or load()"
            )

    def prompts(self, titles: Sequence[str], has_image: Sequence[bool]) -> list[str]:
        """Chat-formatted prompts (the model's own chat template), one per item."""
        self._require_mllm()
        return [
            self.processor.apply_chat_template(
                build_messages(self.config.prompt_template.format(title=title), image),
                add_generation_prompt=True,
                tokenize=False,
            )
            for title, image in zip(titles, has_image, strict=True)
        ]

    def forward(
        self,
        titles: Sequence[str],
        images: Sequence[Image.Image | None] | None = None,
    ) -> torch.Tensor:
        """Item features at the meta positions.

        Args:
            titles: ``B`` item titles.
            images: ``B`` reference images (PIL RGB) or ``None`` per item (mixed batches allowed).

        Returns:
            ``(B, K, D)`` last hidden states at the K meta positions, in the meta token dtype.
        """
        self._require_mllm()
        titles = list(titles)
        images = list(images) if images is not None else [None] * len(titles)
        if len(images) != len(titles):
            raise ValueError(
                f"images: expected {len(titles)} entries (one per title), got {len(images)}"
            )
        if not self.config.read_image:
            images = [None] * len(titles)
        has_image = [im is not None for im in images]
        texts = self.prompts(titles, has_image)
        present = [im for im in images if im is not None]
        encoded = self.processor(
            text=texts, images=present or None, return_tensors="pt", padding=True
        )
        backbone = self.mllm.base_model
        embed = self.mllm.get_input_embeddings()
        device = embed.weight.device
        pad_id = self.processor.tokenizer.pad_token_id or 0
        token_types = encoded.get("mm_token_type_ids")
        ids, mask, meta_mask, token_types = relayout_with_meta(
            encoded["input_ids"],
            encoded["attention_mask"],
            self.config.num_meta_tokens,
            pad_id,
            self.config.padding_side,
            token_types,
        )
        ids, mask, meta_mask = ids.to(device), mask.to(device), meta_mask.to(device)
        batch, k = len(titles), self.config.num_meta_tokens
        embeds = embed(ids)  # (B, L, D)
        meta = (
            self.meta_tokens.to(embeds.device, embeds.dtype).unsqueeze(0).expand(batch, k, -1)
        )  # (B, K, D)
        embeds = embeds.masked_scatter(meta_mask.unsqueeze(-1), meta)  # (B, L, D)

        extra = {
            key: value.to(device)
            for key, value in encoded.items()
            if key not in ("input_ids", "attention_mask", "mm_token_type_ids")
        }
        if "pixel_values" in extra:
            extra["pixel_values"] = extra["pixel_values"].to(embeds.dtype)
        position_ids = self._position_ids(backbone, ids, mask, token_types, extra)
        out = backbone(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            **extra,
        )
        hidden = out.last_hidden_state[meta_mask].view(batch, k, -1)  # (B, K, D)
        return hidden.to(self.meta_tokens.device, self.meta_tokens.dtype)

    @staticmethod
    def _position_ids(backbone, ids, mask, token_types, extra) -> torch.Tensor:
        """Position ids that ignore padding: M-RoPE indices where the model has them, else 1-D."""
        if hasattr(backbone, "get_rope_index") and token_types is not None:
            position_ids, _ = backbone.get_rope_index(
                ids,
                mm_token_type_ids=token_types.to(ids.device),
                image_grid_thw=extra.get("image_grid_thw"),
                attention_mask=mask,
            )
            return position_ids  # (3, B, L)
        return (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
