"""The `clip` model and processor: a BPE trained on zoo texts, stock transformers CLIP classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo.recipes import _base
from icg.zoo.recipes.clip.texts import class_prompts, defect_flags, make_text
from icg.zoo.tokenization import train_clip_bpe

if TYPE_CHECKING:
    from icg.zoo.recipes.clip.config import ClipRecipeConfig

TEXT_HIDDEN = 64  # the sd UNet's cross_attention_dim: do not change
MAX_TOKENS = 32
TOKENIZER_SEED_OFFSET = 900_000


def tokenizer_corpus(n_titles: int = 8_000) -> list[str]:
    """Titles of zoo renders plus every prompt form `make_text` writes."""
    sample = sample_covers(n_titles, seed=zoo_seed(TOKENIZER_SEED_OFFSET), size=8)
    rng = np.random.default_rng(zoo_seed(TOKENIZER_SEED_OFFSET))
    texts = list(sample.titles) + class_prompts() * 4
    for i in range(n_titles):
        flags = defect_flags(sample.specs[i].defects)
        texts.append(
            make_text(
                rng, sample.titles[i], sample.motif[i], sample.palette[i], sample.style[i], flags
            )[0]
        )
    return texts


def build_processor(vocab_size: int, n_titles: int = 8_000):
    """Train the BPE and wrap it, with a 64px image processor, in a stock CLIPProcessor."""

    vocab, merges = train_clip_bpe(tokenizer_corpus(n_titles), vocab_size)
    pairs = [tuple(m.split(" ")) for m in merges]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=MAX_TOKENS)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        image_mean=list(_base.IMAGE_MEAN),
        image_std=list(_base.IMAGE_STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer), vocab, merges


def build_model(cfg: ClipRecipeConfig, tokenizer) -> torch.nn.Module:
    """A fresh tiny CLIPModel sized for `tokenizer`."""

    eos = tokenizer.eos_token_id
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=4 * TEXT_HIDDEN,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.heads,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=cfg.projection_dim,
        ),
        vision_config=dict(
            hidden_size=cfg.vision_hidden,
            intermediate_size=4 * cfg.vision_hidden,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.heads,
            image_size=64,
            patch_size=cfg.patch_size,
            projection_dim=cfg.projection_dim,
        ),
        projection_dim=cfg.projection_dim,
    )
    return CLIPModel(config)


def _features(out: object) -> torch.Tensor:
    """Projected features from `get_*_features` (a tensor in transformers 4, an output in 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def text_embeds(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (B, P)."""
    out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return F.normalize(_features(out), dim=-1)


def image_embeds(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised CLIP image embeddings (B, P) from normalised pixels (B, 3, 64, 64)."""
    return F.normalize(_features(model.get_image_features(pixel_values=pixel_values)), dim=-1)
