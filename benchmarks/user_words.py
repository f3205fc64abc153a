"""How much of the user's taste the prompt's user words carry, against CoverWorld's truth (not a
test; reads the truth).

On the pairs and noise seeds of an evaluation's one-draw `icg-single`, the run's ICG adapter
draws each pair four ways and the truth scores them for the pair's user:

- ``no words``: the adapter's plain prompt (with the user's tokens, as before user words);
- ``user words``: the words the run's `UserPrompt` writes for the user's embedding (what
  `icg generate` and the evaluation draw);
- ``truth words``: the same number of words, for the user's true taste levels of their most
  heavily weighted style dimensions (a ceiling for words chosen from clicks);
- ``no user``: no user at all (`icg-nouser-single`).

It also reports how often the user words name the user's most weighted dimension and its level.

    python benchmarks/user_words.py --run demo-out/run --eval demo-out/eval \
        --world demo-out/world [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icg.data.dataset import load_dataset
from icg.evaluation.methods import load_generators
from icg.generation import draw_covers
from icg.models.icg_model import ICGModel
from icg.pipeline import ICGPipeline
from icg.world.attributes import STYLE_DIMS, STYLE_LEVELS
from icg.world.truth import Truth
from icg.zoo.recipes.clip.texts import style_phrase

FIELDS = ("ctr", "taste_match", "relevance", "aesthetic")


def truth_words(taste: np.ndarray, weights: np.ndarray, k: int) -> list[str]:
    """Words for the true taste levels of the ``k`` most weighted style dimensions."""
    sizes = np.array([len(STYLE_LEVELS[d]) - 1 for d in STYLE_DIMS])
    levels = np.rint(taste * sizes).astype(int)
    return [style_phrase(STYLE_DIMS[d], int(levels[d])) for d in np.argsort(-weights)[:k]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="RUN (its icg/adapter is drawn)")
    parser.add_argument("--eval", type=Path, required=True, help="an `icg evaluate` folder")
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    data, truth = load_dataset(args.world), Truth(args.world)
    manifest = pd.read_parquet(args.eval / "covers" / "manifest.parquet")
    pairs = manifest[manifest["method"] == "icg-single"].reset_index(drop=True)
    if pairs.empty:
        raise SystemExit(f"{args.eval}: no icg-single covers to take pairs and seeds from")
    base, mllm, processor, _ = load_generators(["icg"], "zoo:sd", "zoo:mllm")
    base.set_progress_bar_config(disable=True)
    model = ICGModel.from_pretrained(args.run / "icg" / "adapter", mllm, processor)
    if model.user_prompt is None:
        raise SystemExit(f"{args.run}/icg/adapter has no user_prompt (trained with --user-words 0)")
    k = model.user_prompt.config.top_k
    pipe = ICGPipeline(base, model)
    items = data.items.set_index("item_id")
    users = data.users.set_index("user_id")
    true_users = pd.read_parquet(args.world / "truth" / "users.parquet").set_index("user_id")

    def draw(mode: str) -> np.ndarray:
        images = []
        for row in pairs.itertuples():
            emb = torch.as_tensor(np.asarray(users.at[row.user_id, "embedding"], np.float32))[None]
            taste = np.asarray(true_users.at[row.user_id, "taste"])
            weights = np.asarray(true_users.at[row.user_id, "weights"])
            words = {"no words": [], "truth words": truth_words(taste, weights, k)}.get(mode)
            if words is not None:  # the adapter's prompt with these words instead of the user's
                model.prompts = lambda t, u=None, w=words: [
                    ", ".join([p, *w]) for p in model.adapter.prompts(t)
                ]
            try:
                image = draw_covers(
                    pipe, [items.at[row.item_id, "title"]], [items.at[row.item_id, "image"]],
                    [row.item_id], None if mode == "no user" else emb, [int(row.seed)],
                    args.steps, args.guidance,
                )[0]  # fmt: skip
            finally:
                vars(model).pop("prompts", None)  # back to ICGModel.prompts
            images.append(np.asarray(image.convert("RGB")))
        return np.stack(images)

    result: dict = {"pairs": len(pairs), "words_per_user": k}
    for mode in ("no user", "no words", "user words", "truth words"):
        scores = truth.score(draw(mode), pairs["user_id"].tolist(), pairs["item_id"].tolist())
        result[mode] = {f: round(float(np.mean(scores[f])), 4) for f in FIELDS}
        print(f"{mode:12s} " + "  ".join(f"{f} {result[mode][f]:.3f}" for f in FIELDS), flush=True)

    # do the words name the user's most weighted dimension, and its true level?
    all_users = sorted(users.index[users["embedding"].map(lambda e: np.isfinite(e).all())])
    emb = torch.as_tensor(
        np.stack([users.at[u, "embedding"] for u in all_users]), dtype=torch.float32
    )
    words = model.user_prompt.words(emb)
    named = level = 0
    for u, w in zip(all_users, words, strict=True):
        taste = np.asarray(true_users.at[u, "taste"])
        weights = np.asarray(true_users.at[u, "weights"])
        top = truth_words(taste, weights, 1)[0]
        top_dim = STYLE_DIMS[int(np.argmax(weights))]
        options = {style_phrase(top_dim, lv) for lv in range(len(STYLE_LEVELS[top_dim]))}
        named += bool(options & set(w))
        level += top in w
    result["top_dimension_named"] = round(named / len(all_users), 4)
    result["top_dimension_level_right"] = round(level / len(all_users), 4)
    print(
        f"users {len(all_users)}: words name the most weighted dimension for "
        f"{result['top_dimension_named']:.3f}, with its true level for "
        f"{result['top_dimension_level_right']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
