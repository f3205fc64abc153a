"""Generation: manifest, AI-generated marker, per-pair seeds, segments, cold start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from model_fixtures import perturb_, tiny_icg
from PIL import Image

from icg.data import load_dataset
from icg.generation import (
    generate_covers,
    generation_scorer,
    is_marked_generated,
    pair_seed,
    reward_scorer,
)
from icg.pipeline import ICGPipeline
from icg.segments import segment, segment_users
from icg.world.config import WorldConfig
from icg.world.generate import generate_world


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    world = generate_world(
        root / "w", WorldConfig(n_items=6, n_users=8, n_impressions=200, embedding_dim=6)
    )
    data = load_dataset(world, rejects_dir=root / "rejects")
    base, model = tiny_icg(user_dim=6)
    perturb_(model)  # a "trained" adapter so users change the output
    return root, data, ICGPipeline(base, model)


def _pairs(data, n_users=3, n_items=2):
    users = data.users["user_id"][:n_users]
    items = data.items["item_id"][:n_items]
    return pd.DataFrame([(u, i) for u in users for i in items], columns=["user_id", "item_id"])


def test_manifest_marker_and_determinism(setup, tmp_path: Path):
    root, data, pipe = setup
    pairs = _pairs(data)
    kw = dict(num_inference_steps=2, guidance_scale=1.0, batch_size=4)
    a = generate_covers(pipe, data, pairs, tmp_path / "a", **kw)
    assert list(a.columns) == [
        "user_id", "item_id", "method", "path", "seed", "segment", "candidate", "score",
    ]  # fmt: skip
    assert len(a) == len(pairs) and a["path"].is_unique
    assert all(is_marked_generated(p) for p in a["path"])
    assert pd.read_parquet(tmp_path / "a" / "manifest.parquet").equals(a)
    # the same covers whatever the batch size: seeds are per pair
    b = generate_covers(pipe, data, pairs, tmp_path / "b", **{**kw, "batch_size": 1})
    for pa_, pb in zip(a["path"], b["path"], strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(pa_)), np.asarray(Image.open(pb)))
    assert a["seed"].tolist() == [
        pair_seed(0, u, i) for u, i in zip(pairs.user_id, pairs.item_id, strict=True)
    ]


def test_segments_share_covers_and_scorer_picks(setup, tmp_path: Path):
    root, data, pipe = setup
    pairs = _pairs(data, n_users=8, n_items=1)
    kw = dict(num_inference_steps=2, guidance_scale=1.0, segments=2)
    m = generate_covers(pipe, data, pairs, tmp_path / "s", **kw)
    assert m["path"].nunique() <= 2 and set(m["segment"]) <= {0, 1}
    # the batch plan's segmentation (one implementation): same users, same segments and seeds
    groups = segment(data.users, "kmeans", 2, seed=0)
    own = groups.users.set_index("user_id")["segment"]
    assert m["segment"].tolist() == own.loc[m["user_id"]].tolist()
    keys = groups.table.set_index("segment")["key"]
    expected = [pair_seed(0, keys[s], i) for s, i in zip(m["segment"], m["item_id"], strict=True)]
    assert m["seed"].tolist() == expected

    # a scorer that always prefers segment 1's cover
    def scorer(users, items, images):
        return np.arange(len(users), dtype=float)

    picked = generate_covers(pipe, data, pairs, tmp_path / "p", scorer=scorer, **kw)
    assert (picked["segment"] == 1).all()


@pytest.mark.slow  # K draws per pair through the tiny pipeline: over 30 s on 2 cores
def test_best_of_k_keeps_the_scorers_pick_with_its_own_seed(setup, tmp_path: Path):
    root, data, pipe = setup
    pairs = _pairs(data, n_users=2, n_items=2)
    seen = []

    def scorer(users, items, images):  # prefers bright covers
        seen.extend(users)
        return images.reshape(len(images), -1).mean(1)

    kw = dict(num_inference_steps=2, guidance_scale=1.0, batch_size=3, scorer=scorer)
    m = generate_covers(pipe, data, pairs, tmp_path / "k", candidates=3, **kw)
    assert len(seen) == 3 * len(pairs) and set(seen) == set(pairs["user_id"])
    for row in m.itertuples():
        draws = [tmp_path / "k" / "icg" / f"{row.user_id}_{row.item_id}_c{k}.png" for k in range(3)]
        bright = [np.asarray(Image.open(d)).mean() for d in draws]
        assert row.candidate == int(np.argmax(bright)) and row.path == str(draws[row.candidate])
        assert row.seed == pair_seed(0, row.user_id, row.item_id, row.candidate)
        assert row.score == pytest.approx(max(bright), rel=1e-5)
    # the first draw of best-of-K is the single draw
    one = generate_covers(pipe, data, pairs, tmp_path / "one", **{**kw, "scorer": None})
    first = tmp_path / "k" / "icg" / f"{pairs.user_id[0]}_{pairs.item_id[0]}_c0.png"
    np.testing.assert_array_equal(
        np.asarray(Image.open(first)), np.asarray(Image.open(one.path[0]))
    )
    # without users the scorer sees no user id, once per item
    seen.clear()
    n = generate_covers(pipe, data, pairs, tmp_path / "n", personalize=False, candidates=2, **kw)
    assert seen == [""] * 4 and n["path"].nunique() == 2
    # ... or per pair on the personalized draws' seeds (paired comparisons)
    seen.clear()
    paired = generate_covers(
        pipe, data, pairs, tmp_path / "pp", personalize=False, share=False, candidates=2, **kw
    )
    assert seen == [""] * 8 and paired["path"].is_unique
    assert set(paired["seed"]) <= {
        pair_seed(0, u, i, k)
        for u, i in zip(pairs.user_id, pairs.item_id, strict=True)
        for k in (0, 1)
    }
    with pytest.raises(ValueError, match="needs a scorer"):
        generate_covers(pipe, data, pairs, tmp_path / "x", candidates=2, num_inference_steps=2)


def test_nouser_generates_once_per_item(setup, tmp_path: Path):
    root, data, pipe = setup
    pairs = _pairs(data, n_users=3, n_items=2)
    m = generate_covers(
        pipe,
        data,
        pairs,
        tmp_path / "n",
        method="icg-nouser",
        personalize=False,
        num_inference_steps=2,
        guidance_scale=1.0,
    )
    assert m["path"].nunique() == 2


def test_unknown_ids_are_named(setup, tmp_path: Path):
    root, data, pipe = setup
    with pytest.raises(KeyError, match="i99999"):
        generate_covers(
            pipe, data, pd.DataFrame({"user_id": ["u00000"], "item_id": ["i99999"]}), tmp_path
        )


def test_segment_users_is_seeded():
    emb = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    a, ca = segment_users(emb, 4, seed=1)
    b, cb = segment_users(emb, 4, seed=1)
    np.testing.assert_array_equal(a, b)
    assert ca.shape == (4, 5)


def test_reward_scorer_passes_titles_and_users_and_marks_no_user(setup):
    root, data, pipe = setup
    calls = []

    def reward(images, titles, users, user_ids):  # (B, 3, H, W) in [0, 1], (B, E)
        calls.append((images.shape, titles, users, user_ids))
        values = images.mean((1, 2, 3))
        return values, {"double": 2 * values}

    user, item = data.users["user_id"][0], data.items["item_id"][0]
    images = np.full((2, 8, 8, 3), 255, dtype=np.uint8)
    scores = reward_scorer(reward, data)([user, ""], [item, item], images)
    np.testing.assert_allclose(scores, [1.0, 1.0])
    shape, titles, users, user_ids = calls[0]
    assert shape == (2, 3, 8, 8) and user_ids == [user, None]
    assert titles == [data.items.set_index("item_id").at[item, "title"]] * 2
    assert not users[0].isnan().any() and users[1].isnan().all()
    doubled = reward_scorer(reward, data, "double")([user], [item], images[:1])
    np.testing.assert_allclose(doubled, [2.0])


def test_generation_scorer_policy(tmp_path: Path, setup):
    root, data, pipe = setup
    assert generation_scorer(tmp_path, data) is None  # one draw: nothing to pick
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        generation_scorer(tmp_path, data, candidates=2)  # not a stage-B run folder


class RecordingPipe:
    """Stands in for `ICGPipeline`: records every call's keyword arguments, draws flat covers."""

    def __init__(self) -> None:
        import torch

        self.denoiser = type("U", (), {"device": torch.device("cpu")})()
        self.calls: list[dict] = []

    def __call__(self, titles, images, **kwargs):
        from types import SimpleNamespace

        self.calls.append(kwargs)
        return SimpleNamespace(images=[Image.new("RGB", (8, 8), (9, 9, 9)) for _ in titles])


def test_user_guidance_reaches_the_pipeline_call(setup, tmp_path: Path):
    root, data, _ = setup
    pipe = RecordingPipe()
    pairs = _pairs(data, n_users=2, n_items=1)
    generate_covers(pipe, data, pairs, tmp_path / "w", user_guidance=2.5, num_inference_steps=2)
    generate_covers(pipe, data, pairs, tmp_path / "d", num_inference_steps=2)
    assert [c["user_guidance"] for c in pipe.calls] == [2.5, 1.0]


def test_embedding_users_swap_only_the_user_embedding(setup, tmp_path: Path):
    root, data, _ = setup
    pipe = RecordingPipe()
    a, b = data.users["user_id"][0], data.users["user_id"][1]
    item = data.items["item_id"][0]
    pairs = pd.DataFrame({"user_id": [a], "item_id": [item]})
    m = generate_covers(pipe, data, pairs, tmp_path / "s", embedding_users={a: b})
    emb = pipe.calls[0]["user_embeddings"][0].numpy()
    np.testing.assert_allclose(emb, data.users.set_index("user_id").at[b, "embedding"])
    assert pipe.calls[0]["generator"][0].initial_seed() == pair_seed(0, a, item)
    assert m["user_id"].tolist() == [a] and m["seed"].tolist() == [pair_seed(0, a, item)]
    with pytest.raises(ValueError, match="per-user generation"):
        generate_covers(pipe, data, pairs, tmp_path / "x", embedding_users={a: b}, segments=2)
    with pytest.raises(KeyError, match="nobody"):
        generate_covers(pipe, data, pairs, tmp_path / "y", embedding_users={a: "nobody"})
