"""Byte-level BPE vocabularies for coverworld-tiny, trained with the `tokenizers` library.

Two formats, each the one its stock transformers class reads:

- CLIP: lowercase, words split by CLIP's regex, byte-level alphabet, a `</w>` end-of-word suffix,
  `<|startoftext|>` / `<|endoftext|>` last in the vocabulary (as in openai/clip-vit-*), written
  as `vocab.json` + `merges.txt` (`#version: 0.2` header).
- Qwen2: byte-level BPE without suffix, Qwen2's pre-tokenizer regex, plus the Qwen2-VL special
  tokens (`<|im_start|>`, `<|vision_start|>`, `<|image_pad|>`, ...).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

logger = logging.getLogger(__name__)

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2-VL's special tokens, in the order the released tokenizer numbers them.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _trained_merges(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    """The merges of a trained BPE model, in rank order."""
    model = json.loads(tokenizer.to_str())["model"]
    merges = model["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def train_clip_bpe(texts: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[str]]:
    """Train a CLIP-format BPE.

    Args:
        texts: training corpus (titles, prompts).
        vocab_size: total size including the 512 byte tokens and the two special tokens.

    Returns:
        (vocab, merges): token -> id in CLIP's order (bytes, bytes + `</w>`, merged tokens in
        merge order, then `<|startoftext|>`, `<|endoftext|>`), and merges as "a b" strings.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: _BYTE_ORDER[c])
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    n_merges = vocab_size - 2 * len(alphabet) - 2
    if n_merges <= 0:
        raise ValueError(f"vocab_size={vocab_size}: expected more than {2 * len(alphabet) + 2}")
    trainer = trainers.BpeTrainer(
        # room for the trainer's own alphabet (+ suffixed forms) before it stops merging
        vocab_size=n_merges + 2 * len(alphabet),
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
        min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer)
    merges = _trained_merges(tok)[:n_merges]
    vocab: dict[str, int] = {}
    for c in alphabet:
        vocab[c] = len(vocab)
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    kept: list[str] = []
    for a, b in merges:
        token = a + b
        if token not in vocab:
            vocab[token] = len(vocab)
        kept.append(f"{a} {b}")
    vocab[CLIP_BOS] = len(vocab)
    vocab[CLIP_EOS] = len(vocab)
    logger.info("CLIP BPE: %d tokens, %d merges", len(vocab), len(kept))
    return vocab, kept


def train_qwen_bpe(texts: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[str]]:
    """Train a Qwen2-format byte-level BPE (no end-of-word suffix, no special tokens).

    Args:
        texts: training corpus (rendered chat prompts and answers).
        vocab_size: size of the BPE part (256 byte tokens + merges); special tokens come after.

    Returns:
        (vocab, merges) as for `train_clip_bpe`, special tokens excluded.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: _BYTE_ORDER[c])
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=alphabet,
        show_progress=False,
        min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer)
    merges = _trained_merges(tok)
    vocab = {c: i for i, c in enumerate(alphabet)}
    kept = []
    for a, b in merges:
        if len(vocab) >= vocab_size:
            break
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
        kept.append(f"{a} {b}")
    logger.info("Qwen2 BPE: %d tokens, %d merges", len(vocab), len(kept))
    return vocab, kept


def write_vocab_merges(folder: Path, vocab: dict[str, int], merges: list[str]) -> None:
    """Write `vocab.json` and `merges.txt` in the GPT-2/CLIP layout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode map (also CLIP's `bytes_to_unicode`)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


BYTE_ENCODER: dict[int, str] = _bytes_to_unicode()
# CLIP lists the byte alphabet in bytes_to_unicode's order; keep that order for the ids.
_BYTE_ORDER: dict[str, int] = {c: i for i, c in enumerate(BYTE_ENCODER.values())}
