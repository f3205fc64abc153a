"""Issue 12 part 4: variant-select, the personal-gain user-swap control, the single-draw methods'
seeds and user guidance in the evaluation's draws (tiny hand-made fakes, no models)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from icg.evaluation import baselines
from icg.evaluation.baselines import item_variants, variant_select_source
from icg.evaluation.methods import ICG_METHODS, Drawers, IcgSource, swap_draw
from icg.evaluation.personal import SwapControl, mean_interval, personal_gain, swap_partners
from icg.evaluation.run import EvalConfig


def _png(path: Path, value: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)
    return str(path)


# ---- variant-select --------------------------------------------------------------------------
def test_variant_select_picks_the_variant_the_preference_model_rates_highest(tmp_path: Path):
    dark, mid, bright = (
        _png(tmp_path / f"{n}.png", v) for n, v in [("d", 20), ("m", 120), ("b", 240)]
    )
    other = _png(tmp_path / "ref_j.png", 77)  # never shown: its reference cover is the variant
    data = SimpleNamespace(
        items=pd.DataFrame({"item_id": ["i", "j"], "image": [mid, other]}),
        impressions=pd.DataFrame(
            {"item_id": ["i"] * 5, "user_id": ["x"] * 5, "cover": [mid, dark, bright, dark, mid]}
        ),
    )
    assert item_variants(data) == {"i": sorted([dark, mid, bright]), "j": [other]}
    seen = []

    def preference(users, items, images):  # "lo" likes dark covers, "hi" bright, "mid" grey
        seen.append(len(users))
        level = images.reshape(len(images), -1).mean(1)
        target = np.array([{"lo": 0, "hi": 255, "mid": 120}[u] for u in users])
        return -np.abs(level - target)

    pairs = pd.DataFrame({"user_id": ["lo", "hi", "mid", "hi"], "item_id": ["i", "i", "i", "j"]})
    covers = variant_select_source(data, preference, 8)(pairs)
    assert covers.shape == (4, 8, 8, 3) and covers.dtype == np.uint8
    assert covers.reshape(4, -1).mean(1).tolist() == [20, 240, 120, 77]
    assert seen == [9, 1]  # one scorer call per item: every user × every variant


# ---- personal gain ---------------------------------------------------------------------------
def test_swap_partners_take_the_farthest_user_of_another_segment():
    users = {u: np.array(v, float) for u, v in [("a", [0, 0]), ("b", [1, 0]), ("c", [5, 0]),
                                                ("d", [9, 9]), ("e", [0.1, 0])]}  # fmt: skip
    segment = {"a": 0, "b": 1, "c": 1, "d": 2, "e": 0}
    # pool first: among a's pool, c (segment 1) is farther than b; e shares a's segment
    assert swap_partners(users, segment, ["a"], ["a", "b", "c", "e"]) == {"a": "c"}
    # nobody of another segment in the pool: every user
    assert swap_partners(users, segment, ["a"], ["a", "e"]) == {"a": "d"}
    assert swap_partners(users, {u: 0 for u in users}, ["a"], list(users)) == {}


def test_mean_interval_is_a_normal_interval_over_paired_differences():
    d = np.array([0.1, 0.3, 0.2, 0.4])
    out = mean_interval(d)
    half = 1.959963984540054 * d.std(ddof=1) / 2
    assert out == pytest.approx(
        {"mean": 0.25, "ci_low": 0.25 - half, "ci_high": 0.25 + half, "n": 4}
    )
    assert np.isnan(mean_interval(np.array([0.5]))["ci_low"])


class TruthStub:
    """A truth where a cover made for its own user clicks more: the cover's grey level encodes
    the user it was drawn for; CTR for user u is 0.1 on others' covers and 0.4 + 0.01 k on u's
    own cover of item ``i<k>``."""

    def __init__(self, users: list[str], segments: list[int]) -> None:
        self.users = pd.DataFrame({"segment": segments}, index=pd.Index(users, name="user_id"))
        self.code = {u: 10 * (k + 1) for k, u in enumerate(users)}

    def score(self, images, user_ids, item_ids):
        level = images.reshape(len(images), -1).mean(1)
        own = level == np.array([self.code[u] for u in user_ids])
        lift = np.array([0.01 * int(i[1:]) for i in item_ids])
        return {"ctr": np.where(own, 0.4 + lift, 0.1)}


def test_personal_gain_is_positive_when_own_covers_click_more():
    users = ["u0", "u1", "u2", "cold"]
    truth = TruthStub(users, [0, 1, 1, 0])
    embeddings = [np.array(v, float) for v in ([0, 0], [3, 0], [1, 0], [2, 2])]
    data = SimpleNamespace(users=pd.DataFrame({"user_id": users, "embedding": embeddings}))
    draws = []

    def draw(pairs, partners):  # each cover carries the code of the user whose embedding drew it
        draws.append(dict(partners))
        drawn_for = [partners.get(u, u) for u in pairs["user_id"]]
        return np.stack([np.full((4, 4, 3), truth.code[u], np.uint8) for u in drawn_for])

    pairs = pd.DataFrame(
        [(u, i) for u in users for i in ("i1", "i2", "i3")], columns=["user_id", "item_id"]
    )
    cold = (pairs["user_id"] == "cold").to_numpy()
    gain = SwapControl(truth, data, draw)(pairs, cold)
    # u0 (segment 0) swaps with the farthest of u1, u2 (u1); u1, u2 with the farther of the
    # segment-0 users (u0 and the cold user, who may be a partner but is never swapped)
    assert draws == [{}, {"u0": "u1", "u1": "u0", "u2": "cold"}]
    assert gain["n"] == 9 and gain["mean"] == pytest.approx(0.32)
    assert gain["ci_low"] <= gain["mean"] <= gain["ci_high"] and gain["ci_low"] > 0
    # icg-single's covers are reused when given: only the swapped draw is made
    draws.clear()
    own = draw(pairs, {})
    draws.clear()
    assert SwapControl(truth, data, draw)(pairs, cold, own) == gain and len(draws) == 1
    # a cover that ignores the user gains nothing
    same = np.full((3, 4, 4, 3), 10, np.uint8)
    flat = personal_gain(truth, pairs[:3], same, same)
    assert flat["mean"] == 0.0 and flat["ci_low"] == flat["ci_high"] == 0.0


def test_no_partner_means_no_personal_gain():
    truth = TruthStub(["a", "b"], [0, 0])
    data = SimpleNamespace(
        users=pd.DataFrame({"user_id": ["a", "b"], "embedding": [np.zeros(2), np.ones(2)]})
    )
    pairs = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["i", "i"]})
    assert SwapControl(truth, data, lambda p, s: None)(pairs, np.zeros(2, bool)) is None


# ---- the ICG draws: seeds of the single-draw methods, user guidance ---------------------------
@pytest.fixture
def recorded(monkeypatch):
    """IcgSource with the adapter loading and the generation replaced by recorders."""
    calls = []

    class FakePipe:
        def __init__(self, base, model, lora=None) -> None:
            pass

        def remove_adapter(self) -> None:
            pass

    def generated_source(drawer, data, out, method, *, personalize, size, **kwargs):
        calls.append({"method": method, "personalize": personalize, **kwargs})
        return lambda pairs: np.zeros((len(pairs), size, size, 3), np.uint8)

    monkeypatch.setattr("icg.models.icg_model.ICGModel.from_pretrained", lambda *a: None)
    monkeypatch.setattr("icg.evaluation.methods.ICGPipeline", FakePipe)
    monkeypatch.setattr(baselines, "generated_source", generated_source)
    return calls


def test_single_draw_methods_share_seeds_and_pass_user_guidance(recorded, tmp_path: Path):
    adapters = {m: tmp_path for m in ICG_METHODS}
    drawers = Drawers(data=None, covers=tmp_path, size=4, adapters=adapters,
                      run_scorers=lambda run: "scorer")  # fmt: skip
    cfg = EvalConfig(candidates=4, user_guidance=1.5, seed=7)
    pairs = pd.DataFrame({"user_id": ["u"], "item_id": ["i"]})
    for method in ("icg-single", "icg-nouser-single", "icg-nouser"):
        IcgSource(method, drawers, cfg)(pairs)
    swap_draw(drawers, cfg)(pairs, {"u": "v"})
    single, nouser_single, nouser, swapped = recorded
    # one draw each on the pair's own seeds (share=False), so icg-nouser-single is
    # icg-nouser's first draw and draws the same noise as icg-single
    for call in (single, nouser_single):
        assert (call["candidates"], call["scorer"], call["share"], call["seed"]) == (
            1,
            None,
            False,
            7,
        )
    assert (nouser["candidates"], nouser["scorer"]) == (4, "scorer")
    assert (single["personalize"], nouser_single["personalize"]) == (True, False)
    assert {c["seed"] for c in recorded} == {7} and not any(c["share"] for c in recorded)
    assert all(c["user_guidance"] == 1.5 for c in recorded)
    # the swap control: icg-single's draw with another user's embedding, in its own folder
    assert swapped["method"] == "icg-swap" and swapped["embedding_users"] == {"u": "v"}
    assert swapped["candidates"] == 1 and swapped["personalize"]
