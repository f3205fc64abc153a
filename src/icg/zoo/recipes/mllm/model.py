"""The `mllm` model and processor: stock LLaVA classes with a CLIP ViT and a Qwen2 decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPModel,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2Tokenizer,
)

from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo.recipes import _base
from icg.zoo.recipes.mllm.chat import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    answer_text,
    render_chat,
)
from icg.zoo.tokenization import train_qwen_bpe

if TYPE_CHECKING:
    from icg.zoo.recipes.mllm.config import MllmRecipeConfig

TOKENIZER_SEED_OFFSET = 2_900_000


def image_seq_length(vision_feature_select_strategy: str) -> int:
    """Image tokens per cover: the 16 patches of 64px / 16, plus the CLS token with "full"."""
    return (64 // 16) ** 2 + (vision_feature_select_strategy == "full")


def build_processor(
    vocab_size: int, n_titles: int = 6_000, vision_feature_select_strategy: str = "default"
):
    """Train the BPE and wrap it with a 64px CLIPImageProcessor in a stock LlavaProcessor."""

    s = sample_covers(n_titles, seed=zoo_seed(TOKENIZER_SEED_OFFSET), size=8)
    corpus = [
        render_chat(s.titles[i], answer_text(s.motif[i], s.palette[i], s.style[i]))
        for i in range(len(s.titles))
    ]
    vocab, merges = train_qwen_bpe(corpus, vocab_size)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m.split(" ")) for m in merges],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        model_max_length=256,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        image_mean=list(_base.IMAGE_MEAN),
        image_std=list(_base.IMAGE_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=16,
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(cfg: MllmRecipeConfig, tokenizer) -> torch.nn.Module:
    """A fresh tiny LlavaForConditionalGeneration sized for `tokenizer`."""

    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=cfg.vision_hidden,
            intermediate_size=4 * cfg.vision_hidden,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.heads,
            image_size=64,
            patch_size=16,
            projection_dim=cfg.vision_hidden,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=3 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=eos,
            pad_token_id=pad,
        ),
        image_token_index=image_token,
        image_seq_length=image_seq_length(cfg.vision_feature_select_strategy),
        vision_feature_layer=-1,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos, pad], pad_token_id=pad, max_new_tokens=40, do_sample=False
    )
    return model


def init_vision_from_clip(model, clip_path: str) -> None:
    """Copy a CLIPModel's image tower into the LLaVA vision tower (configs must agree)."""

    clip = CLIPModel.from_pretrained(clip_path)
    tower = model.model.vision_tower
    target = getattr(tower, "vision_model", tower)
    ours, theirs = model.config.vision_config, clip.config.vision_config
    for field in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
    ):
        if getattr(ours, field) != getattr(theirs, field):
            raise ValueError(
                f"vision_from_pretrained={clip_path}: vision_config.{field}={getattr(theirs, field)}, "
                f"expected {getattr(ours, field)} (the mllm's vision tower)"
            )
    target.load_state_dict(clip.vision_model.state_dict())
