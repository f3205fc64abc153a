"""The conversation of the `mllm` recipe: ChatML with LLaVA's ``<image>``, answers, label masks.

The user shows a cover and its title and asks `QUESTION`; the assistant answers
``"motif: star. palette: blue. style: dark vivid large center thin flat."``.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from icg.world.attributes import MOTIFS, PALETTES, style_words

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN)
QUESTION = "describe the cover."
# ChatML, as Qwen2 instruct models write it, with LLaVA's <image> placeholder; no default system.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_ANSWER = re.compile(r"motif:\s*([a-z-]+).*?palette:\s*([a-z-]+)", re.S)


def answer_text(motif: int, palette: int, style: np.ndarray) -> str:
    """The assistant's description of a cover."""
    return f"motif: {MOTIFS[motif]}. palette: {PALETTES[palette]}. style: {' '.join(style_words(style))}."


def parse_answer(text: str) -> tuple[int, int]:
    """(motif, palette) indices named by a generated answer; -1 where unreadable."""
    found = _ANSWER.search(text.lower())
    if not found:
        return -1, -1
    m, p = found.groups()
    return (MOTIFS.index(m) if m in MOTIFS else -1), (PALETTES.index(p) if p in PALETTES else -1)


def messages(title: str, answer: str | None = None) -> list[dict]:
    """The chat of one example: the user shows the cover and its title; the assistant answers."""
    chat: list[dict] = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": f"title: {title}\n{QUESTION}"}],
        }
    ]
    if answer is not None:
        chat.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return chat


def render_chat(title: str, answer: str) -> str:
    """The transcript as the chat template writes it (for the BPE corpus, no template engine)."""
    return (
        f"<|im_start|>user\n<image>\ntitle: {title}\n{QUESTION}<|im_end|>\n"
        f"<|im_start|>assistant\n{answer}<|im_end|>\n"
    )


def encode(processor, images: np.ndarray, titles: list[str], answers: list[str] | None) -> dict:
    """Processor inputs for a batch; with answers, also `labels` (-100 outside the answer)."""
    if answers is None:
        chats = [messages(t) for t in titles]
        texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in chats]
    else:
        chats = [messages(t, a) for t, a in zip(titles, answers, strict=True)]
        texts = [processor.apply_chat_template(c) for c in chats]
    inputs = processor(images=list(images), text=texts, padding=True, return_tensors="pt")
    if answers is not None:
        inputs["labels"] = answer_labels(inputs["input_ids"], processor.tokenizer)
    return dict(inputs)


def answer_labels(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """LM targets: the tokens after the last `<|im_start|>assistant\\n`, up to its `<|im_end|>`."""
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    labels = torch.full_like(input_ids, -100)
    for row, ids in enumerate(input_ids.tolist()):
        begin = len(ids) - 1 - ids[::-1].index(start)  # the assistant turn is the last one
        header = len(tokenizer("assistant\n", add_special_tokens=False)["input_ids"])
        first = begin + 1 + header
        end = ids.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), first)
        labels[row, first : end + 1] = input_ids[row, first : end + 1]
    return labels
