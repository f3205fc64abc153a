"""The CLIP-format BPE: stock tokenizers load it, and they agree with OpenAI's reference BPE."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import regex

from icg.zoo.tokenization import (
    BYTE_ENCODER,
    CLIP_BOS,
    CLIP_EOS,
    train_clip_bpe,
    train_qwen_bpe,
    write_vocab_merges,
)

CORPUS = [
    "The Azure Star",
    "star of cobalt notes",
    "My lost gem, cyan podcast!",
    "a cover with a star",
    "a blue cover",
    "Crossroads & crimson vol. 3",
    "the the the star star blue blue",
] * 20
TEXTS = [
    "The AZURE star!!",
    "half-moon: lost tales 2",
    "unseen wörds ok",
    "a cover for crux & plum",
]


def _openai_bpe(token: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """OpenAI CLIP's simple_tokenizer.bpe, restated (the reference the format must match)."""
    word = tuple(token[:-1]) + (token[-1] + "</w>",)
    while len(word) > 1:
        pairs = set(zip(word, word[1:], strict=False))
        bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if bigram not in ranks:
            break
        first, second = bigram
        new: list[str] = []
        i = 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                new.append(first + second)
                i += 2
            else:
                new.append(word[i])
                i += 1
        word = tuple(new)
    return list(word)


def _openai_encode(text: str, vocab: dict[str, int], merges: list[str]) -> list[int]:
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    pat = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )
    text = regex.sub(r"\s+", " ", html.unescape(text)).strip().lower()
    ids = [vocab[CLIP_BOS]]
    for token in regex.findall(pat, text):
        token = "".join(BYTE_ENCODER[b] for b in token.encode("utf-8"))
        ids.extend(vocab[t] for t in _openai_bpe(token, ranks))
    return ids + [vocab[CLIP_EOS]]


@pytest.fixture(scope="module")
def clip_bpe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int], list[str]]:
    vocab, merges = train_clip_bpe(CORPUS, vocab_size=600)
    folder = tmp_path_factory.mktemp("cliptok")
    write_vocab_merges(folder, vocab, merges)
    return folder, vocab, merges


def test_clip_vocab_layout(clip_bpe: tuple[Path, dict[str, int], list[str]]) -> None:
    folder, vocab, merges = clip_bpe
    ids = sorted(vocab.values())
    assert ids == list(range(len(vocab)))
    order = sorted(vocab, key=vocab.get)
    assert order[:256] == list(BYTE_ENCODER.values())  # bytes, in bytes_to_unicode order
    assert order[256:512] == [c + "</w>" for c in BYTE_ENCODER.values()]
    assert order[-2:] == [CLIP_BOS, CLIP_EOS]
    assert (folder / "merges.txt").read_text().startswith("#version: 0.2\n")
    assert "star</w>" in vocab and "blue</w>" in vocab
    for m in merges:
        a, b = m.split(" ")
        assert a + b in vocab


def test_stock_clip_tokenizers_agree_with_reference(
    clip_bpe: tuple[Path, dict[str, int], list[str]], tmp_path: Path
) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, CLIPTokenizer, CLIPTokenizerFast

    folder, vocab, merges = clip_bpe
    slow = CLIPTokenizer.from_pretrained(str(folder))  # from vocab.json + merges.txt only
    fast = CLIPTokenizerFast.from_pretrained(str(folder))  # an alias in transformers 5
    slow.save_pretrained(str(tmp_path))  # writes tokenizer.json + tokenizer_config.json
    auto = AutoTokenizer.from_pretrained(str(tmp_path))  # needs tokenizer_config.json
    assert type(auto).__name__ == "CLIPTokenizer"
    backend = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in TEXTS:
        ref = _openai_encode(text, vocab, merges)
        assert slow(text)["input_ids"] == ref
        assert fast(text)["input_ids"] == ref
        assert auto(text)["input_ids"] == ref
        assert backend.encode(text).ids == ref
    assert (
        slow.decode(slow("The Azure Star")["input_ids"], skip_special_tokens=True)
        == "the azure star"
    )


def test_qwen_bpe_is_byte_level() -> None:
    vocab, merges = train_qwen_bpe(CORPUS, vocab_size=300)
    assert len(vocab) <= 300
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert all(len(m.split(" ")) == 2 for m in merges)
    assert json.dumps(vocab)  # serialisable as vocab.json
