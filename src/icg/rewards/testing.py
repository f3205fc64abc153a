"""Tiny random reward components built in code, for tests and quick configs (CPU, milliseconds)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from icg.config import DEFAULT_CLIP
from icg.rewards.clip import ClipPreprocess, ClipTowers

WORDS = (
    "a an the of and in on with cover for title red blue green yellow orange purple pink teal "
    "circle square triangle diamond cross ring star crescent cat dog sun moon tree book night "
    "day city sea river old new tale story guide dark light vivid muted"
).split()


def tiny_clip_tokenizer(max_length: int = 16):
    """A word-level fast tokenizer over ``WORDS`` (pad, unk, bos, eos first)."""

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {t: i for i, t in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=max_length,
    )


def tiny_clip(seed: int = 0, image_size: int = 32, projection_dim: int = 16) -> ClipTowers:
    """A tiny random transformers ``CLIPModel`` (2 layers, width 16) wrapped as `ClipTowers`."""

    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
            projection_dim=projection_dim,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
            projection_dim=projection_dim,
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    pre = ClipPreprocess(image_size, (image_size, image_size))
    return ClipTowers(model, tokenizer, pre, name_or_path=None)


def zoo_or_tiny_clip() -> tuple[ClipTowers, bool]:
    """The shipped ``zoo:clip`` when it is trained, else `tiny_clip`; and whether it is the zoo's."""
    try:
        return ClipTowers.from_pretrained(DEFAULT_CLIP), True
    except (FileNotFoundError, KeyError, OSError, ValueError):
        return tiny_clip(), False
