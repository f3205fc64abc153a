"""Gate material: fresh renders from the WORLD seed range, and CoverWorld folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from icg.world.seeds import WORLD, ZOO
from icg.zoo import evaldata


def test_fresh_covers_use_world_seeds_never_zoo_seeds() -> None:
    g = evaldata.fresh_covers(6, k=2)
    seed = int(g.source.split("seed ")[1].rstrip(")"))
    assert seed >= WORLD and not ZOO <= seed < WORLD
    assert g.images.shape == (6, 64, 64, 3) and g.images.dtype == np.uint8
    assert len(g.titles) == 6 and g.style.shape == (6, 6)
    again = evaldata.fresh_covers(6, k=2)
    assert (again.images == g.images).all()


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from icg.world import generate
    from icg.world.config import WorldConfig

    out = tmp_path_factory.mktemp("world") / "w"
    cfg = WorldConfig(seed=11, n_items=12, n_users=4, n_impressions=30, n_variants=2)
    return generate.generate_world(out, cfg)


def test_world_items_and_covers(tiny_world: Path) -> None:
    import pandas as pd

    items = evaldata.world_items(tiny_world)
    truth = pd.read_parquet(tiny_world / "truth" / "items.parquet")
    assert items.images.shape == (12, 64, 64, 3)
    assert items.titles == pd.read_parquet(tiny_world / "items.parquet")["title"].tolist()
    assert items.motif.tolist() == truth["motif"].tolist()
    covers = evaldata.world_covers(tiny_world)
    table = pd.read_parquet(tiny_world / "truth" / "covers.parquet")
    assert len(covers.motif) == len(table) and covers.style.shape == (len(table), 6)
    assert all(covers.titles)
