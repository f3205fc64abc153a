"""The gates of `mllm`: motif and palette named by greedy answers, against the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from icg.zoo import evaldata
from icg.zoo.recipes.mllm.chat import encode, parse_answer

THRESHOLDS = {"motif_acc": 0.90, "palette_acc": 0.90}


@torch.no_grad()
def describe(
    model, processor, images: np.ndarray, titles: list[str], batch_size: int = 64
) -> list[str]:
    """Greedy answers of the model for (image, title) pairs."""
    model.eval()
    out: list[str] = []
    for i in range(0, len(titles), batch_size):
        inputs = encode(processor, images[i : i + batch_size], titles[i : i + batch_size], None)
        ids = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1] :]
        out.extend(processor.batch_decode(new, skip_special_tokens=True))
    return out


def measure(path: str | Path, gate_set: evaldata.GateSet) -> dict[str, float]:
    """Gate metrics of the model at `path` on `gate_set` (greedy generation vs truth)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(path))
    processor = AutoProcessor.from_pretrained(str(path))
    answers = describe(model, processor, gate_set.images, gate_set.titles)
    parsed = np.array([parse_answer(a) for a in answers])  # (N, 2)
    return {
        "motif_acc": float((parsed[:, 0] == gate_set.motif).mean()),
        "palette_acc": float((parsed[:, 1] == gate_set.palette).mean()),
        "parse_rate": float((parsed >= 0).all(axis=1).mean()),
        "n": float(len(answers)),
    }


def evaluate(path: str | Path, world_dir: str | Path | None) -> dict[str, float]:
    """Gate metrics on the items (title + reference cover) of a CoverWorld folder."""
    gate_set = (
        evaldata.fresh_covers(300) if world_dir is None else evaldata.world_items(Path(world_dir))
    )
    return measure(path, gate_set)
