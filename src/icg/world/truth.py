"""The truth API (evaluation only): scores ANY image for (user, item) against the hidden truth.

    truth = Truth(world_dir)
    scores = truth.score(images, user_ids, item_ids)   # relevance, aesthetic, taste, ctr, ...
    best = truth.oracle_covers(user_ids, item_ids)      # the best achievable cover per pair

Training code never imports this module nor reads `<world>/truth/` (enforced by tests).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from icg.config import load_config
from icg.world.attributes import NUM_STYLE, CoverSpec
from icg.world.clicks import attractiveness_logit, sigmoid
from icg.world.config import WorldConfig
from icg.world.readout import Readout, aesthetic_from_readout, read, style_appeal
from icg.world.render import render
from icg.world.users import taste_match

__all__ = ["Truth", "read_attributes", "true_aesthetic"]


def read_attributes(images: np.ndarray) -> Readout:
    """Attributes of uint8 images (N, H, W, 3): motif/palette probabilities and style in [0, 1]."""
    return read(images)


def true_aesthetic(images: np.ndarray) -> np.ndarray:
    """The true aesthetic score of uint8 images (N, H, W, 3), in [0, 1]."""
    return aesthetic_from_readout(read(images))


def relevance_from_readout(r: Readout, motif: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """How well covers show their item's true content: mean of P(motif) and P(palette)."""
    idx = np.arange(len(motif))
    return 0.5 * r.motif_probs[idx, motif] + 0.5 * r.palette_probs[idx, palette]


class Truth:
    """The hidden truth of one CoverWorld folder.

    Args:
        world_dir: a folder written by `icg world generate` (needs `truth/` and `world.yaml`).
    """

    def __init__(self, world_dir: Path | str) -> None:
        root = Path(world_dir)
        if not (root / "truth").is_dir():
            raise FileNotFoundError(f"{root}: no truth/ folder; truth metrics need a CoverWorld")
        self.root = root
        self.config = load_config(WorldConfig, root / "world.yaml")
        self.items = pd.read_parquet(root / "truth" / "items.parquet").set_index("item_id")
        self.users = pd.read_parquet(root / "truth" / "users.parquet").set_index("user_id")
        self._taste = np.stack(self.users["taste"].to_numpy())  # (U, S)
        self._weights = np.stack(self.users["weights"].to_numpy())  # (U, S)

    def _user_rows(self, user_ids) -> np.ndarray:
        missing = [u for u in user_ids if u not in self.users.index]
        if missing:
            raise KeyError(f"unknown user ids (first 3): {missing[:3]}")
        return self.users.index.get_indexer(list(user_ids))

    def _item_rows(self, item_ids) -> np.ndarray:
        rows = self.items.index.get_indexer(list(item_ids))
        if (rows < 0).any():
            raise KeyError(
                f"unknown item ids (first 3): {list(np.asarray(item_ids)[rows < 0][:3])}"
            )
        return rows

    def score(
        self, images: np.ndarray | None, user_ids, item_ids, readout: Readout | None = None
    ) -> dict[str, np.ndarray]:
        """Score covers shown to users for items (all of length N).

        Args:
            images: uint8 covers (N, H, W, 3); ``None`` when ``readout`` is given.
            user_ids, item_ids: N ids each.
            readout: the attributes already read off the N covers (`read`), so that a cover
                scored for many pairs is read once.

        Returns arrays (N,): relevance, aesthetic, taste_match, ctr (true expected CTR at the top
        position), motif_ok, palette_ok.
        """
        r = read(images) if readout is None else readout
        it = self.items.iloc[self._item_rows(item_ids)]
        us = self._user_rows(user_ids)
        rel = relevance_from_readout(r, it["motif"].to_numpy(), it["palette"].to_numpy())
        aes = aesthetic_from_readout(r)
        match = taste_match(r.style, self._taste[us], self._weights[us])
        logit = attractiveness_logit(
            self.config,
            rel,
            aes,
            match,
            it["popularity"].to_numpy(),
            self.users["bias"].to_numpy()[us],
        )
        return {
            "relevance": rel,
            "aesthetic": aes,
            "taste_match": match,
            "ctr": sigmoid(logit),
            "motif_ok": r.motif == it["motif"].to_numpy(),
            "palette_ok": r.palette == it["palette"].to_numpy(),
        }

    def oracle_specs(self, user_ids, item_ids, candidates: int = 8) -> list[list[CoverSpec]]:
        """Per pair, the clean covers with the `candidates` best styles under the analytic score."""
        levels = np.array(list(itertools.product(range(3), repeat=NUM_STYLE)))  # (L, S)
        coords = levels / 2.0
        appeal = style_appeal(levels)  # (L,)
        us = self._user_rows(user_ids)
        it = self.items.iloc[self._item_rows(item_ids)]
        match = 1.0 - np.einsum(
            "nls,ns->nl", np.abs(coords[None] - self._taste[us][:, None]), self._weights[us]
        )
        est = self.config.w_taste * match + self.config.w_aes * 0.3 * appeal[None]  # (N, L)
        top = np.argsort(-est, axis=1)[:, :candidates]
        out = []
        for n, (m, p) in enumerate(zip(it["motif"], it["palette"], strict=True)):
            out.append(
                [CoverSpec(int(m), int(p), tuple(int(v) for v in levels[k])) for k in top[n]]
            )
        return out

    def oracle_covers(self, user_ids, item_ids) -> np.ndarray:
        """The best cover per (user, item) pair, chosen by the true CTR: uint8 (N, H, W, 3)."""
        user_ids, item_ids = list(user_ids), list(item_ids)
        size = self.config.image_size
        specs = self.oracle_specs(user_ids, item_ids)
        k = len(specs[0])
        images = np.stack([render(s, size) for row in specs for s in row])  # (N*k, H, W, 3)
        scores = self.score(images, np.repeat(user_ids, k), np.repeat(item_ids, k))["ctr"].reshape(
            len(user_ids), k
        )
        best = scores.argmax(1)
        return images.reshape(len(user_ids), k, *images.shape[1:])[np.arange(len(user_ids)), best]
