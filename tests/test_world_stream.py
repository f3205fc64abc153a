"""Streaming traffic in CoverWorld: the same world whatever the chunk size, and the worlds that
existing seeds made before streaming, bit for bit (stored digests, see `world_digest`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from world_digest import world_digests

import icg.world.generate as generate
from icg.world.clicks import concat_logs, simulate, simulate_chunks
from icg.world.config import WorldConfig
from icg.world.readout import concat_readouts, read
from icg.world.sampling import sample_covers

# Digests of worlds (40 items x 20 users x 3000 impressions) written by the generator before it
# streamed (commit 9e935b1): every figure measured on a seed stays comparable.
STORED = {
    3: {
        "impressions.parquet": "9ef77271f86cc58a8c84f70fc549121d4e0d289f18217c7c666bef55c0e6f727",
        "items.parquet": "a12e64643d7c9e1c7a6a2e245d913d038bd1e4fcffc36c45e208751e25660ae3",
        "truth/covers.parquet": "9095955ec4cc1cd2d879c4c20f929d70bf50066f8a46eb54ec19ac131adf3978",
        "truth/impressions.parquet": "7cc79fde5ef70b01f3f55ee4cab969435bb664a15b44582f6e3636e85ef648c0",
        "truth/items.parquet": "84fcdffa277d2e6a9610603a3bd9798fb65779ddcfcbd0ad6d08aea2507e6de7",
        "truth/users.parquet": "1fb2ff5d8950a0ee9136a87f97dcfb9c74ed5cd9000dcee369a80462d83e2ddc",
        "users.parquet": "3f0094debedb91ceb5293c11e30161a4b3ac12622d0ca855236603744140c8ac",
        "images": "a5c69ddd76a65007fea9c385e0ab4c47c7fcb17c9cccd8ed0de8ff7ed481587d",
    },
    11: {
        "impressions.parquet": "64c0a9c08567ec2ce10f64840b36c1b738a25d712cc2ab12be83e225786d2ffa",
        "items.parquet": "fdaf4433d89314c9aced3142ed7357768bc8acb934999fcb73657ed09158106e",
        "truth/covers.parquet": "f269c66b18e1e1d5a48bae2683b7ec0a11e2a2886197e10371c2f696a783ce4a",
        "truth/impressions.parquet": "406d04f83814a9f4542ef630ae9d4fc45cc13bfcdad9f4be992f33838ee8f655",
        "truth/items.parquet": "9c66a986a20775f4b8aa3a22a457887af7b510c5d9ff070b9910b21ddcce4f97",
        "truth/users.parquet": "aedc49a065a0f165e1d678ef73348abbd3cea7213f014a636556e03aa16cd096",
        "users.parquet": "be9ece45f28aaafa83588e528110bb5d6e8dcce01857c7a47c0847c46f1fe8f1",
        "images": "fa1649841c10418ac3bb59896b3d7439fd5df20cac5ca01f29b63d2a54246fd2",
    },
    5: {
        "impressions.parquet": "47c4ca86943459330850e3e6be7821cb0695a35a45a7f1ec35e5828dcbeb1e40",
        "items.parquet": "189348771f39114b5e8eef31efe8207480e520c4b4da348a0917f463afba86b8",
        "truth/covers.parquet": "d2bb626f91022a58e0c20081a0ff8d7642f4f5f1cf6993d0e3a033c4a0cc96d1",
        "truth/impressions.parquet": "9ce5f977ebddf4b2ac84b0523858f54cd4fe58d0047ee80170e969108aa6d701",
        "truth/items.parquet": "c7ca838e6cd864791b508a303df84bdda31ef8695175f0a84ab53b9c05d65479",
        "truth/users.parquet": "feec24505433a5a61d1cc78de30461b3f4ab216a1359c59bb791ef82d030156e",
        "users.parquet": "f7594c00ade8431d30f3d23601579e5ed74e467eb6c445667eed54b552b8997f",
        "images": "38a5940cf54b83a74d7f8515fdbf5ea554f6f5f9ecd5e229e5f452e2906a7164",
    },
}
# The full demo's world (300 x 150 x 300k, seed 3), same commit; slow, run with -m slow.
STORED_DEMO = {
    "impressions.parquet": "90cbbd46f4e6fad94e14bd3f759208ef0a78cab78e298365ef4a2c50642bef3c",
    "items.parquet": "f1a92240c1647420136afbe5d668c1fb7981fa8906733fc8ca1f353c2a848b67",
    "truth/covers.parquet": "470054ebde9482d5506a7cd68ae6b4baeae9cd6c765ae247ad142871e2938c5e",
    "truth/impressions.parquet": "3d65d3488f4347269ba5d99c3fa64e330be8a4ca740e43df46e7ce373868d77d",
    "truth/items.parquet": "548f51a2faa0aa8311d7de2b9cfc945ba225ca5009447e3f5f216ae95e9fd182",
    "truth/users.parquet": "177eb98193e99abc7e684f6be7617c3fdf38340a4f8b0e576658cf073bdc2293",
    "users.parquet": "02dece96966589caf811e7b83327b78599c73906dc92318d103331f02e8e7995",
    "images": "bb22885a5ad0cf53dd0803bf17407d76b8cb8ce7c594317d60ee74f536271a34",
}


@pytest.mark.parametrize("seed", [3, 11, 5])
def test_existing_seeds_make_the_worlds_they_made_before_streaming(tmp_path: Path, seed: int):
    cfg = WorldConfig(n_items=40, n_users=20, n_impressions=3000, seed=seed)
    root = generate.generate_world(tmp_path / "w", cfg, chunk_impressions=130)
    assert world_digests(root) == STORED[seed]


@pytest.mark.slow
def test_the_demo_world_is_the_one_it_was(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(generate, "READ_CHUNK", 512)
    cfg = WorldConfig(n_items=300, n_users=150, n_impressions=300_000, seed=3)
    root = generate.generate_world(tmp_path / "w", cfg, chunk_impressions=7777)
    assert world_digests(root) == STORED_DEMO


def _simulate(chunk: int | None, n_impressions: int = 2345):
    cfg = WorldConfig(n_impressions=n_impressions, page_size=7)
    rng = np.random.default_rng(42)
    gen = np.random.default_rng(0)
    popularity = gen.normal(0, 0.5, 30)
    brightness = gen.random((30, 3))
    logits = gen.normal(-1, 1, (12, 30, 3))
    parts = list(
        simulate_chunks(
            cfg, rng, np.arange(2, 12), popularity, brightness,
            lambda u, i, v: logits[u, i, v], chunk_impressions=chunk,
        )
    )  # fmt: skip
    return parts, rng.bit_generator.state


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000, 10**6])
def test_the_same_impressions_whatever_the_chunk_size(chunk: int):
    ref, ref_state = _simulate(None)
    parts, state = _simulate(chunk)
    a, b = concat_logs(ref), concat_logs(parts)
    assert len(a.user) == 2345
    for field in ("user", "item", "variant", "position", "p_click", "clicked", "timestamp"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert state == ref_state  # the generator ends where one long draw leaves it
    if chunk < 2345:
        assert len(parts) > 1
        assert max(len(p.user) for p in parts) <= -(-chunk // 7) * 7


def test_simulate_is_its_chunks_concatenated():
    cfg = WorldConfig(n_impressions=500, page_size=5)
    args = (np.arange(4), np.zeros(20), np.zeros((20, 2)), lambda u, i, v: np.zeros(len(u)))
    whole = simulate(cfg, np.random.default_rng(1), *args)
    parts = list(simulate_chunks(cfg, np.random.default_rng(1), *args, chunk_impressions=45))
    np.testing.assert_array_equal(whole.item, concat_logs(parts).item)


def test_no_impressions_is_an_empty_log():
    cfg = WorldConfig(n_impressions=0)
    log = simulate(cfg, np.random.default_rng(0), np.arange(3), np.zeros(5), np.zeros((5, 2)),
                   lambda u, i, v: np.zeros(len(u)))  # fmt: skip
    assert len(log.user) == 0 and log.clicked.dtype == bool


def test_bad_chunk_size_is_refused():
    with pytest.raises(ValueError, match="chunk_impressions"):
        _simulate(0)


def test_covers_read_in_chunks_read_as_one_call():
    images = sample_covers(1100, seed=5).images
    whole = read(images)
    parts = concat_readouts([read(images[s : s + 512]) for s in range(0, 1100, 512)])
    for field in ("motif_probs", "palette_probs", "style", "sharpness", "noise", "contrast"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(parts, field), err_msg=field)
