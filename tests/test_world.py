"""CoverWorld: determinism, the click model, position bias, the oracle, truth isolation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icg.config import load_config
from icg.world.attributes import MOTIFS, PALETTES, STYLE_DIMS, CoverSpec, Defects
from icg.world.clicks import examination, sigmoid, simulate
from icg.world.config import WorldConfig
from icg.world.generate import generate_world
from icg.world.render import render
from icg.world.sampling import sample_covers
from icg.world.titles import make_title, title_ceiling, title_meaning

SMALL = WorldConfig(n_items=40, n_users=30, n_impressions=3000, seed=7)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "world.yaml":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("w") / "world", SMALL)


def test_layout(world: Path):
    for name in ("items.parquet", "users.parquet", "impressions.parquet", "world.yaml"):
        assert (world / name).is_file()
    for name in ("items", "users", "covers", "impressions"):
        assert (world / "truth" / f"{name}.parquet").is_file()
    items = pd.read_parquet(world / "items.parquet")
    assert list(items.columns) == ["item_id", "title", "category", "image"]
    assert all((world / p).is_file() for p in items["image"])
    imp = pd.read_parquet(world / "impressions.parquet")
    assert len(imp) == SMALL.n_impressions
    assert imp["event_id"].is_unique and (imp["position"] >= 0).all()
    users = pd.read_parquet(world / "users.parquet")
    assert len(users["embedding"].iloc[0]) == SMALL.embedding_dim
    cold = pd.read_parquet(world / "truth" / "users.parquet").query("cold_start")["user_id"]
    assert len(cold) > 0 and not set(cold) & set(imp["user_id"])
    assert load_config(WorldConfig, world / "world.yaml") == SMALL


def test_seed_determinism(world: Path, tmp_path: Path):
    again = generate_world(tmp_path / "again", SMALL)
    assert _digest(again) == _digest(world)
    other = generate_world(tmp_path / "other", SMALL.model_copy(update={"seed": 8}))
    assert _digest(other) != _digest(world)


def test_refuses_to_clobber(world: Path):
    with pytest.raises(FileExistsError, match="not empty"):
        generate_world(world, SMALL)


def test_config_yaml_rejects_unknown_field(tmp_path: Path):
    (tmp_path / "w.yaml").write_text("n_items: 3\nn_itemz: 4\n")
    with pytest.raises(ValueError, match="n_itemz"):
        load_config(WorldConfig, tmp_path / "w.yaml")


def test_click_model_reproduces_ctr_and_position_curve():
    cfg = WorldConfig(n_impressions=200_000, page_size=8, legacy_brightness_bias=0.0)
    rng = np.random.default_rng(0)
    n_items = 50
    log = simulate(
        cfg,
        rng,
        active_users=np.arange(20),
        popularity=np.zeros(n_items),
        cover_brightness=np.zeros((n_items, 2)),
        logit_fn=lambda u, i, v: np.full(len(u), -0.5),
    )
    expected = examination(np.arange(8), cfg.position_decay) * sigmoid(np.array(-0.5))
    observed = pd.Series(log.clicked).groupby(log.position).mean().to_numpy()
    np.testing.assert_allclose(observed, expected, atol=0.01)
    assert abs(log.clicked.mean() - expected.mean()) < 0.005


def test_position_bias_misleads_a_naive_learner(tmp_path: Path):
    """Clicks say light covers win; the truth (attractiveness) says they barely differ."""
    cfg = WorldConfig(n_items=120, n_users=100, n_impressions=30_000, seed=1)
    root = generate_world(tmp_path / "w", cfg)
    imp = pd.read_parquet(root / "impressions.parquet")
    truth = pd.read_parquet(root / "truth" / "impressions.parquet")
    covers = pd.read_parquet(root / "truth" / "covers.parquet").set_index("cover")
    light = covers.loc[imp["cover"], "style_brightness"].to_numpy() == 2
    dark = covers.loc[imp["cover"], "style_brightness"].to_numpy() == 0
    naive = imp["clicked"][light].mean() / imp["clicked"][dark].mean()
    true = truth["attractiveness"][light].mean() / truth["attractiveness"][dark].mean()
    assert naive > 1.3 * true, (naive, true)
    # examination-corrected click rates recover the truth
    corrected = imp["clicked"] / truth["examination"]
    debiased = corrected[light].mean() / corrected[dark].mean()
    assert abs(debiased - true) < abs(naive - true) / 3


def test_generation_work_scales_with_items_not_impressions(tmp_path: Path, monkeypatch):
    """What keeps a 50k-impression world fast (its time is in benchmarks/bench_world.py): every
    cover is rendered once, and the click model scores all impressions in one vectorised call
    (and once more for the truth's attractiveness column), so 8x the impressions adds no render
    and no call, only rows."""
    import icg.world.generate as gen

    work = {"renders": 0, "logit_calls": 0, "logit_rows": 0}
    render_once, logit = gen.render, gen.attractiveness_logit

    def counted_render(spec, size):
        work["renders"] += 1
        return render_once(spec, size)

    def counted_logit(cfg, relevance, *args):
        work["logit_calls"] += 1
        work["logit_rows"] += len(relevance)
        return logit(cfg, relevance, *args)

    monkeypatch.setattr(gen, "render", counted_render)
    monkeypatch.setattr(gen, "attractiveness_logit", counted_logit)
    seen = {}
    for n in (1000, 8000):
        work.update(renders=0, logit_calls=0, logit_rows=0)
        cfg = WorldConfig(n_items=12, n_users=10, n_impressions=n, n_variants=3, seed=5)
        root = generate_world(tmp_path / f"w{n}", cfg)
        rows = len(pd.read_parquet(root / "impressions.parquet"))
        seen[n] = (dict(work), rows)
    for n, (w, rows) in seen.items():
        assert w["renders"] == 12 * (1 + 3), w  # a reference and 3 variants per item, once each
        assert w["logit_calls"] == 2 and w["logit_rows"] == 2 * rows, w
        assert n <= rows < n + cfg.page_size  # whole pages of impressions


def test_oracle_accuracy_on_fresh_renders():
    from icg.world.oracle import oracle_accuracy
    from icg.world.readout import read

    assert oracle_accuracy()["motif"] >= 0.97
    sample = sample_covers(400, seed=123_456, defect_rate=0.3)  # never an oracle seed
    r = read(sample.images)
    assert (r.motif == sample.motif).mean() >= 0.95  # 400 samples: 97% ± 1.7% (2 s.e.)
    clean = sample_covers(300, seed=654_321, defect_rate=0.0)
    rc = read(clean.images)
    assert (rc.palette == clean.palette).mean() >= 0.95
    for d in ("brightness", "saturation"):
        k = STYLE_DIMS.index(d)
        err = np.abs(rc.style[:, k] - clean.style[:, k] / 2.0)
        assert np.median(err) < 0.15, d


def test_truth_scores_reference_below_oracle(world: Path):
    from icg.world.truth import Truth

    truth = Truth(world)
    items = pd.read_parquet(world / "items.parquet").head(10)
    user_ids = ["u00000"] * len(items)
    refs = np.stack(
        [np.asarray(__import__("PIL.Image").Image.open(world / p)) for p in items["image"]]
    )
    ref = truth.score(refs, user_ids, items["item_id"])
    best = truth.score(truth.oracle_covers(user_ids, items["item_id"]), user_ids, items["item_id"])
    assert (best["ctr"] >= ref["ctr"] - 1e-9).mean() >= 0.9
    assert best["ctr"].mean() > ref["ctr"].mean()
    assert best["motif_ok"].mean() >= 0.9 and best["palette_ok"].mean() >= 0.9


def test_aesthetic_penalises_defects():
    from icg.world.truth import true_aesthetic

    rng = np.random.default_rng(0)
    base = [
        CoverSpec(int(rng.integers(8)), int(rng.integers(8)), (1, 1, 1, 0, 1, 0), seed=i)
        for i in range(50)
    ]
    clean = true_aesthetic(np.stack([render(s) for s in base]))
    for d in (Defects(blur=2.0), Defects(noise=0.08), Defects(fade=0.5)):
        flawed = true_aesthetic(
            np.stack([render(CoverSpec(s.motif, s.palette, s.style, d, s.seed)) for s in base])
        )
        assert flawed.mean() < clean.mean() - 0.05, d


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(0, len(MOTIFS) - 1),
    p=st.integers(0, len(PALETTES) - 1),
    seed=st.integers(0, 2**31),
)
def test_title_grammar_means_its_content(m, p, seed):
    rng = np.random.default_rng(seed)
    title = make_title(m, p, rng, typo_rate=0.0, omit_palette_rate=0.0)
    motif, palette = title_meaning(title)
    assert motif[m] > 0 and palette[p] > 0
    assert np.isclose(motif.sum(), 1) and np.isclose(palette.sum(), 1)


def test_title_ceiling_is_the_bayes_reader_of_the_title_alone():
    circle, red = MOTIFS.index("circle"), PALETTES.index("red")
    teal, blue = PALETTES.index("teal"), PALETTES.index("blue")
    assert title_ceiling(["The red circle"], np.array([circle]), np.array([red])) == (1.0, 1.0)
    # no content word: every value ties, right one time in eight
    assert title_ceiling(["Lost tales"], np.array([circle]), np.array([red])) == (1 / 8, 1 / 8)
    # "ocean" is blue or teal half and half, but teal has fewer words of its own (4 against
    # 5), so a teal item says "ocean" more often: the Bayes reader answers teal
    for truth, hit in ((teal, 1.0), (blue, 0.0)):
        assert title_ceiling(["The ocean circle"], np.array([circle]), np.array([truth]))[1] == hit
    rng = np.random.default_rng(0)
    content = rng.integers(len(MOTIFS), size=(2000, 2))
    titles = [make_title(int(m), int(p), rng) for m, p in content]
    motif, palette = title_ceiling(titles, content[:, 0], content[:, 1])
    assert 0.85 < palette < motif < 0.99, (motif, palette)


def test_title_grammar_reaches_2000_titles():
    rng = np.random.default_rng(0)
    titles = {make_title(int(rng.integers(8)), int(rng.integers(8)), rng) for _ in range(5000)}
    assert len(titles) >= 2000


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(0, 7),
    p=st.integers(0, 7),
    style=st.tuples(*[st.integers(0, 2)] * 6),
    size=st.sampled_from([8, 32, 64, 100, 512]),
    blur=st.sampled_from([0.0, 1.0, 2.0]),
    noise=st.sampled_from([0.0, 0.05]),
)
def test_renderer_properties(m, p, style, size, blur, noise):
    spec = CoverSpec(m, p, style, Defects(blur=blur, noise=noise), seed=3)
    img = render(spec, size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, render(spec, size))


def test_renderer_rejects_bad_input():
    with pytest.raises(ValueError, match="size"):
        render(CoverSpec(0, 0, (0,) * 6), 1024)
    with pytest.raises(ValueError, match="motif"):
        CoverSpec(9, 0, (0,) * 6)
    with pytest.raises(ValueError, match="brightness"):
        CoverSpec(0, 0, (5, 0, 0, 0, 0, 0))
