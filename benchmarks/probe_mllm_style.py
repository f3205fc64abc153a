"""Which style dimensions does the MLLM's reading of a cover carry? A linear probe per dimension.

The ICG adapter can only pass on what the meta tokens hold: the MLLM reads title + cover, and
the adapter maps the meta tokens' hidden states to the base model. For fresh renders of the
zoo's gate seed range (never trained on), the meta-token features of an ICG model's encoder are
flattened and a multinomial logistic regression is fitted per style dimension on the first
``--train`` covers; its held-out accuracy is printed beside the majority-class rate. A dimension
the probe cannot read is one no adapter trained on these features can draw from the reference
(it is the reason `zoo:icg-adapter`'s texture gate fails).

    python benchmarks/probe_mllm_style.py [--adapter zoo:icg-adapter] [--covers 1024] [--json F]

The style labels are the truth reader's levels of each render (evaluation side only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from icg.pipeline import ICGPipeline
from icg.world.attributes import STYLE_DIMS
from icg.zoo import evaldata
from icg.zoo.recipes.icg_adapter.gates import reference_style
from icg.zoo.registry import resolve


def features(pipe: ICGPipeline, gate_set: evaldata.GateSet, batch: int = 64) -> np.ndarray:
    """(N, K * D) meta-token features of every cover of ``gate_set`` (title + cover)."""
    rows = []
    with torch.no_grad():
        for i in range(0, len(gate_set.titles), batch):
            images = [Image.fromarray(im) for im in gate_set.images[i : i + batch]]
            f = pipe.encode_items(list(gate_set.titles[i : i + batch]), images)  # (B, K, D)
            rows.append(f.reshape(f.shape[0], -1).float().cpu().numpy())
    return np.concatenate(rows)


def probe(x: np.ndarray, style: np.ndarray, n_train: int) -> dict[str, dict[str, float]]:
    """Per style dimension: held-out accuracy of a logistic-regression probe and the majority
    rate of the held-out labels."""
    out = {}
    for d, name in enumerate(STYLE_DIMS):
        y = style[:, d]
        clf = LogisticRegression(max_iter=2000).fit(x[:n_train], y[:n_train])
        held = y[n_train:]
        out[name] = {
            "probe_accuracy": float((clf.predict(x[n_train:]) == held).mean()),
            "majority": float(max((held == v).mean() for v in np.unique(held))),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", default="zoo:icg-adapter", help="An ICG model folder or zoo name.")
    p.add_argument("--covers", type=int, default=1024, help="Fresh renders (train + held out).")
    p.add_argument("--train", type=int, default=768, help="Renders the probes are fitted on.")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    gate_set = evaldata.fresh_covers(args.covers, k=7, defect_rate=0.1)
    pipe = ICGPipeline.from_pretrained(resolve(args.adapter))
    result = {
        "adapter": args.adapter,
        "covers": args.covers,
        "train": args.train,
        "dims": probe(features(pipe, gate_set), reference_style(gate_set), args.train),
    }
    for name, r in result["dims"].items():
        print(f"{name:12s} probe {r['probe_accuracy']:.3f}  majority {r['majority']:.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
