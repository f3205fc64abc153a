"""The gates of `clip`: zero-shot motif and palette accuracy from the class prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import CLIPModel, CLIPTokenizer

from icg.world.attributes import MOTIFS, PALETTES, STYLE_DIMS
from icg.zoo import evaldata
from icg.zoo.recipes import _base
from icg.zoo.recipes.clip.model import image_embeds, text_embeds
from icg.zoo.recipes.clip.texts import ATTRIBUTE_GROUPS, class_prompts

THRESHOLDS = {"zero_shot_motif_acc": 0.90, "zero_shot_palette_acc": 0.90}


@torch.no_grad()
def zero_shot(
    model, tokenizer, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot motif and palette predictions from the gate prompts: two (N,) index arrays."""
    model.eval()
    tok = tokenizer(
        class_prompts()[: len(MOTIFS) + len(PALETTES)], padding=True, return_tensors="pt"
    )
    text = text_embeds(model, tok["input_ids"], tok["attention_mask"])  # (16, P)
    motif, palette = [], []
    for i in range(0, len(images), batch_size):
        pix = _base.images_to_tensor(images[i : i + batch_size])
        img = image_embeds(model, pix)  # (B, P)
        sims = img @ text.T  # (B, 16)
        motif.append(sims[:, : len(MOTIFS)].argmax(1).numpy())
        palette.append(sims[:, len(MOTIFS) :].argmax(1).numpy())
    return np.concatenate(motif), np.concatenate(palette)


@torch.no_grad()
def zero_shot_groups(model, tokenizer, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Zero-shot level of every attribute group of `ATTRIBUTE_GROUPS`: (N, G) indices."""
    model.eval()
    tok = tokenizer(class_prompts(), padding=True, return_tensors="pt")
    text = text_embeds(model, tok["input_ids"], tok["attention_mask"])  # (C, P)
    out = []
    for i in range(0, len(images), batch_size):
        sims = image_embeds(model, _base.images_to_tensor(images[i : i + batch_size])) @ text.T
        cols, start = [], 0
        for _, prompts in ATTRIBUTE_GROUPS:
            cols.append(sims[:, start : start + len(prompts)].argmax(1))
            start += len(prompts)
        out.append(torch.stack(cols, dim=1).numpy())  # (B, G)
    return np.concatenate(out)


def measure(path: str | Path, gate_set: evaldata.GateSet) -> dict[str, float]:
    """Gate metrics of the model at `path` on `gate_set`."""

    model = CLIPModel.from_pretrained(str(path))
    tokenizer = CLIPTokenizer.from_pretrained(str(path))
    motif, palette = zero_shot(model, tokenizer, gate_set.images)
    metrics = {
        "zero_shot_motif_acc": float((motif == gate_set.motif).mean()),
        "zero_shot_palette_acc": float((palette == gate_set.palette).mean()),
        "n": float(len(motif)),
    }
    if gate_set.style is not None and gate_set.defects is not None:  # informative, not gated
        levels = zero_shot_groups(model, tokenizer, gate_set.images)  # (N, G)
        truth = np.concatenate([gate_set.style, gate_set.defects], axis=1)  # (N, 9)
        hits = levels[:, 2:] == truth
        metrics["zero_shot_style_acc"] = float(hits[:, : len(STYLE_DIMS)].mean())
        metrics["zero_shot_defect_acc"] = float(hits[:, len(STYLE_DIMS) :].mean())
    return metrics


def evaluate(path: str | Path, world_dir: str | Path | None) -> dict[str, float]:
    """Gate metrics on the covers of a CoverWorld folder (fresh renders when None)."""
    gate_set = (
        evaldata.fresh_covers(1000) if world_dir is None else evaldata.world_covers(Path(world_dir))
    )
    return measure(path, gate_set)
