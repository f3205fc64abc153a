"""Where ICG's user path loses the user's taste, measured against CoverWorld's truth (not a test).

Three measurements on one world, one stage-A (or stage-B) adapter and its preference model:

1. **targets**: how personal stage A's targets are. For user A and a partner B of another taste
   segment, the item's variant the preference model picks for A and for B, both scored by the
   truth for A (the user-swap control of `icg.evaluation.personal`, on existing covers).
2. **tokens**: how much the user moves the ICG tokens, split into the offset every user shares
   (with a user vs without) and each user's own part, beside the spread across items.
3. **style**: whether the generator draws the style of the image its MLLM reads. Each item is
   drawn once per cover variant, with that variant as the reference image and no user; the
   truth reads the style of both; the per-dimension correlation says whether the ICG branch
   carries style into the image at all (a personal cover needs that lever).

    python benchmarks/diagnose_user_path.py --world W --adapter RUN/align/adapter \
        --preference RUN/preference --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icg.data.dataset import load_dataset
from icg.data.images import load_image
from icg.evaluation.baselines import item_variants, load_covers
from icg.evaluation.personal import mean_interval, swap_partners
from icg.training.click_weights import preferred_covers
from icg.world.attributes import STYLE_DIMS
from icg.world.readout import read
from icg.world.truth import Truth


def target_personalness(data, truth, preference: Path, n_users: int, n_items: int, rng) -> dict:
    """The user-swap control on the preferred variants (stage A's default targets)."""
    segment = {str(u): int(s) for u, s in truth.users["segment"].items()}
    embedding = {
        str(u): np.asarray(e, float)
        for u, e in zip(data.users["user_id"], data.users["embedding"], strict=True)
    }
    warm = [u for u in embedding if not truth.users.loc[u, "cold_start"]]
    users = list(rng.choice(warm, n_users, replace=False))
    items = list(rng.choice(data.items["item_id"].astype(str), n_items, replace=False))
    partners = swap_partners(embedding, segment, users, users)
    pairs = pd.DataFrame([(u, i) for u in users for i in items], columns=["user_id", "item_id"])
    swapped = pairs.assign(user_id=pairs["user_id"].map(partners))
    own = preferred_covers(preference, pairs, data.impressions, data.users)
    theirs = preferred_covers(preference, swapped, data.impressions, data.users)
    u, i = pairs["user_id"].tolist(), pairs["item_id"].tolist()
    mine, other = (
        truth.score(load_covers(own, 64), u, i),
        truth.score(load_covers(theirs, 64), u, i),
    )
    return {
        "pairs": len(pairs),
        "ctr_own_pick": float(mine["ctr"].mean()),
        "ctr_partner_pick": float(other["ctr"].mean()),
        "taste_own_pick": float(mine["taste_match"].mean()),
        "taste_partner_pick": float(other["taste_match"].mean()),
        "personal_gain": mean_interval(mine["ctr"] - other["ctr"]),
        "same_pick_share": float(np.mean(np.array(own) == np.array(theirs))),
    }


@torch.no_grad()
def token_split(model, data, n_users: int = 32, n_items: int = 8) -> dict:
    """Norms of: the no-user tokens, the shared with-user offset, each user's own part, and the
    tokens' spread across items (means over items and users)."""
    items = data.items.head(n_items)
    users = torch.tensor(np.stack(data.users["embedding"].head(n_users).to_numpy()))
    feats = model.encoder(items["title"].tolist(), [load_image(p) for p in items["image"]])
    n_i, n_u = feats.shape[0], users.shape[0]
    f, rows = feats.repeat_interleave(n_u, 0), users.float().repeat(n_i, 1)
    with_user = model(f, rows).flatten(1).view(n_i, n_u, -1)
    without = model(f, torch.full_like(rows, float("nan"))).flatten(1).view(n_i, n_u, -1)
    offset = (with_user - without).mean(1, keepdim=True)
    own = with_user - without - offset
    items_spread = without[:, 0] - without[:, 0].mean(0)
    return {
        "no_user": float(without.norm(dim=-1).mean()),
        "shared_user_offset": float(offset.norm(dim=-1).mean()),
        "per_user": float(own.norm(dim=-1).mean()),
        "across_items": float(items_spread.norm(dim=-1).mean()),
    }


def style_following(pipe, data, n_items: int, per_item: int, steps: int, guidance: float) -> dict:
    """Correlation, per style dimension, between the style of the reference image the MLLM reads
    and the style the truth reads off the draw (no user, one seed)."""
    variants = item_variants(data)
    titles, covers = [], []
    head = data.items.head(n_items)
    for item, title in zip(head["item_id"], head["title"], strict=True):
        for cover in variants[str(item)][:per_item]:
            titles.append(str(title))
            covers.append(cover)
    drawn = pipe(
        titles, [load_image(c) for c in covers], num_inference_steps=steps,
        guidance_scale=guidance, generator=torch.Generator().manual_seed(0), output_type="np",
    ).images  # fmt: skip
    drawn = (np.asarray(drawn) * 255).round().astype(np.uint8)
    given, got = read(load_covers(covers, 64)).style, read(drawn).style
    corr = {d: float(np.corrcoef(given[:, k], got[:, k])[0, 1]) for k, d in enumerate(STYLE_DIMS)}
    return {"draws": len(covers), "corr": corr}


def main() -> None:
    from icg.pipeline import ICGPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument(
        "--adapter", type=Path, required=True, help="RUN/align/adapter or RUN/icg/adapter"
    )
    parser.add_argument("--preference", type=Path, required=True)
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--style-items", type=int, default=48)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    data, truth = load_dataset(args.world, check_images=False), Truth(args.world)
    pipe = ICGPipeline.from_pretrained(args.adapter)
    result = {
        "world": str(args.world),
        "adapter": str(args.adapter),
        "targets": target_personalness(
            data, truth, args.preference, args.users, args.items, np.random.default_rng(0)
        ),
        "tokens": token_split(pipe.model.eval(), data),
        "style": style_following(pipe, data, args.style_items, 2, args.steps, args.guidance),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
