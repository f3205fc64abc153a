"""The methods `icg evaluate` compares, as cover sources ``pairs -> uint8 (N, H, W, 3)``.

    reference    the item's own cover
    prompt       the base model alone, prompted with a handcrafted template ("a cover for <title>")
    mllm-prompt  the MLLM writes a text prompt from (title, reference image), the base model draws
                 it: the disjoint two-stage pipeline ICG replaces
    variant-select  the item's existing cover variant the run's preference model rates best for
                 the user (artwork personalization as platforms do it today)
    icg-nouser   an ICG adapter without the user
    icg, icg-*   ICG adapters, personalized per (user, item)
    oracle       the truth's best cover for (user, item) (CoverWorld only)

Every generated method draws with the same per-pair noise seed (`pair_seed`), writes its PNGs and
``manifest.parquet`` through `generate_covers`, and reads them back, so what is scored is exactly
what a user of `icg generate` would get.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from icg.data.images import load_image
from icg.generation import generate_covers
from icg.models.backbones import denoiser_of
from icg.pipeline import ICGPipeline

CoverSource = Callable[[pd.DataFrame], np.ndarray]
PROMPT_TEMPLATE = "a cover for {title}"
# What the `mllm-prompt` baseline asks the MLLM (the coverworld-tiny `mllm` was trained on it).
DESCRIBE_QUESTION = "describe the cover."
_FIELD_LABEL = re.compile(r"\b[a-z_]+:\s*")


def load_covers(paths: Sequence[str | Path], size: int) -> np.ndarray:
    """Images at ``paths`` as uint8 ``(N, size, size, 3)`` through the safe loader."""

    return np.stack([np.asarray(load_image(p, size=size)) for p in paths])


class PromptDrawer:
    """The base pipeline alone, called like `ICGPipeline` (users, item keys, user guidance and,
    without a writer, reference images ignored).

    Args:
        base: a diffusers text-to-image pipeline.
        template: the prompt, ``{title}`` replaced by the title or by the prompt writer's text.
        writer: optional ``(titles, images) -> texts`` (e.g. `MllmPromptWriter`): the text put in
            the template instead of the title.
    """

    def __init__(self, base, template: str = PROMPT_TEMPLATE, writer=None) -> None:
        self.base = base
        self.denoiser = denoiser_of(base)  # where `generate_covers` seeds its generators
        self.template = template
        self.writer = writer

    def __call__(
        self,
        titles: Sequence[str],
        images=None,
        user_embeddings=None,
        item_keys: Sequence[str] | None = None,
        user_guidance: float = 1.0,
        **kwargs,
    ) -> SimpleNamespace:
        texts = list(titles) if self.writer is None else self.writer(titles, images)
        prompts = [self.template.replace("{title}", t) for t in texts]
        self.base.set_progress_bar_config(disable=True)
        return self.base(prompt=prompts, **kwargs)


class MllmPromptWriter:
    """An image-text-to-text model writes a text-to-image prompt from (title, reference image).

    The answer's field labels (``"motif: "``) are dropped; the rest is the prompt text.

    Args:
        model, processor: a transformers image-text-to-text model and its processor.
        question: what the model is asked after the title.
        max_new_tokens: answer length limit (greedy decoding).
    """

    def __init__(
        self, model, processor, question: str = DESCRIBE_QUESTION, max_new_tokens: int = 40
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.question = question
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, titles: Sequence[str], images) -> list[str]:

        pics = [ICGPipeline._load(im) for im in images]
        chats = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": f"title: {t}\n{self.question}"},
                    ],
                }
            ]
            for t in titles
        ]
        texts = [self.processor.apply_chat_template(c, add_generation_prompt=True) for c in chats]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # rows end together
        try:  # the processor may be shared with an ICG encoder: restore its padding side
            inputs = self.processor(text=texts, images=pics, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answers = self.processor.batch_decode(
            ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return [_FIELD_LABEL.sub("", a).replace(".", " ").split("\n")[0].strip() for a in answers]


def generated_source(
    drawer,
    data,
    out: Path,
    method: str,
    *,
    personalize: bool,
    size: int,
    **generate_kwargs,
) -> CoverSource:
    """A source that generates with ``drawer`` (an `ICGPipeline` or a `PromptDrawer`) into
    ``out/<method>/`` and reads the PNGs back in pair order."""

    def source(pairs: pd.DataFrame) -> np.ndarray:
        manifest = generate_covers(
            drawer, data, pairs, out, method=method, personalize=personalize, **generate_kwargs
        )
        return load_covers(manifest["path"].tolist(), size)

    return source


def reference_source(data, size: int) -> CoverSource:
    """The item's own cover."""
    images = data.items.set_index("item_id")["image"]
    return lambda pairs: load_covers(images.loc[pairs["item_id"]].tolist(), size)


def vae_roundtrip_source(data, vae, size: int, batch_size: int = 32) -> CoverSource:
    """``vae-roundtrip``: the item's own cover encoded (latent mode) and decoded by the base
    model's VAE. No draw of the base model can keep more of the cover than this, so it is the
    ceiling every generated method's fidelity is read against."""

    images = data.items.set_index("item_id")["image"]

    @torch.no_grad()
    def source(pairs: pd.DataFrame) -> np.ndarray:
        covers = load_covers(images.loc[pairs["item_id"]].tolist(), size)  # (N, H, W, 3)
        x = torch.from_numpy(covers).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out = []
        for chunk in x.split(batch_size):
            latents = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist.mode()
            decoded = vae.decode(latents).sample.float().clamp(-1.0, 1.0)
            out.append(((decoded + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1))
        return torch.cat(out).cpu().numpy() if out else covers

    return source


def oracle_source(truth) -> CoverSource:
    """The truth's CTR-optimal cover (CoverWorld only)."""
    return lambda pairs: truth.oracle_covers(pairs["user_id"], pairs["item_id"])


def item_variants(data) -> dict[str, list[str]]:
    """Item id -> the distinct cover paths the platform has shown for it (sorted; items never
    shown: their reference cover)."""
    shown: dict[str, list[str]] = {}
    if data.impressions is not None:
        for item, covers in data.impressions.groupby("item_id")["cover"]:
            shown[str(item)] = sorted({str(c) for c in covers})
    return {
        str(i): shown.get(str(i)) or [str(image)]
        for i, image in zip(data.items["item_id"], data.items["image"], strict=True)
    }


def variant_select_source(data, scorer, size: int) -> CoverSource:
    """``variant-select``: per (user, item), the item's existing cover variant (`item_variants`)
    that ``scorer`` (the run's preference model) rates best for the user; ties go to the first
    variant in path order. Each item's variants are loaded once and scored for all its users."""
    variants = item_variants(data)

    def source(pairs: pd.DataFrame) -> np.ndarray:
        users = pairs["user_id"].astype(str).to_numpy()
        items = pairs["item_id"].astype(str).to_numpy()
        out = np.zeros((len(pairs), size, size, 3), dtype=np.uint8)
        for item in dict.fromkeys(items):
            rows = np.flatnonzero(items == item)
            images = load_covers(variants[item], size)  # (V, H, W, 3)
            v = len(images)
            scores = scorer(
                np.repeat(users[rows], v).tolist(),
                [item] * (len(rows) * v),
                np.tile(images, (len(rows), 1, 1, 1)),
            )
            best = np.nanargmax(np.asarray(scores, dtype=np.float64).reshape(len(rows), v), axis=1)
            out[rows] = images[best]
        return out

    return source
