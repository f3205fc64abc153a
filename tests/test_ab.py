"""`icg ab report`: the interval math, A/A coverage, the sample-ratio check, position-adjusted
CTR and the report files, on synthetic logs whose truth is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from icg.ab import ab_report, assign_arms, lift, load_log, ratio_stats, srm_check, write_report
from icg.ab.examination import fit_pbm
from icg.ab.stats import bootstrap_lift, sample_size
from icg.data.errors import DataError


def _users(rng: np.random.Generator, n: int, ctr: float, multiplier: float = 1.0):
    """Per-user (clicks, impressions): heterogeneous activity and click propensity, so clicks
    of one user are correlated and an impression-level variance would be too small."""
    imps = rng.poisson(20, n) + 1
    p = rng.beta(2, 2 / ctr - 2, n) * multiplier  # mean ctr * multiplier
    return rng.binomial(imps, np.clip(p, 0, 1)).astype(float), imps.astype(float)


def test_ratio_variance_of_equal_denominators_is_the_variance_of_the_mean():
    num, den = np.array([1.0, 0.0, 2.0, 1.0]), np.ones(4)
    r = ratio_stats(num, den)
    assert r.value == 1.0
    assert r.var == pytest.approx(np.var(num, ddof=1) / 4)


def test_known_lift_is_recovered_and_its_interval_covers_it():
    rng = np.random.default_rng(0)
    control = ratio_stats(*_users(rng, 20_000, 0.1))
    treated = ratio_stats(*_users(rng, 20_000, 0.1, multiplier=1.1))
    out = lift(treated, control)
    assert out["low"] < 0.10 < out["high"]
    assert out["low"] > 0 and out["p_value"] < 1e-6
    assert out["high"] - out["low"] < 0.05
    assert out["lift"] == pytest.approx(treated.value / control.value - 1)


def test_delta_method_and_bootstrap_agree():
    rng = np.random.default_rng(1)
    t, c = _users(rng, 3000, 0.1, 1.05), _users(rng, 3000, 0.1)
    delta = lift(ratio_stats(*t), ratio_stats(*c))
    boot = bootstrap_lift(t, c, replicates=2000, seed=0)
    assert boot["high"] - boot["low"] == pytest.approx(delta["high"] - delta["low"], rel=0.15)
    assert boot["low"] == pytest.approx(delta["low"], abs=0.01)


def test_a_a_intervals_cover_zero_at_the_nominal_rate():
    """Over S null experiments the misses are Binomial(S, 0.05): accept the central 99.9%."""
    seeds, level = 400, 0.95
    covered, naive_covered = 0, 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        a, b = _users(rng, 300, 0.08), _users(rng, 300, 0.08)
        out = lift(ratio_stats(*a), ratio_stats(*b), level)
        covered += out["low"] <= 0 <= out["high"]
        # the same with impressions as independent units: too narrow, under-covers
        p = [x[0].sum() / x[1].sum() for x in (a, b)]
        se = np.sqrt(
            sum(pi * (1 - pi) / x[1].sum() / pi**2 for pi, x in zip(p, (a, b), strict=True))
        )
        naive_covered += abs(np.log(p[0] / p[1])) <= 1.96 * se
    lo, hi = stats.binom.interval(0.999, seeds, level)
    assert lo <= covered <= hi, (covered, lo, hi)
    assert naive_covered < lo  # so the test can tell a wrong variance


def test_sample_size_reaches_the_power_it_promises():
    rng = np.random.default_rng(2)
    t, c = ratio_stats(*_users(rng, 4000, 0.1, 1.05)), ratio_stats(*_users(rng, 4000, 0.1))
    n = sample_size(t, c)
    # at n users per arm the expected z of the observed effect is z_.975 + z_.8
    se = np.sqrt((t.users * t.var_log + c.users * c.var_log) / n)
    assert np.log(t.value / c.value) / se == pytest.approx(1.96 + 0.8416, rel=0.01)
    assert sample_size(c, c) == float("inf")


def test_hash_randomisation_is_stable_and_balanced():
    ids = [f"u{k:06d}" for k in range(20_000)]
    arms = assign_arms(ids, ["control", "icg"], salt="exp1")
    assert (arms == assign_arms(ids, ["control", "icg"], salt="exp1")).all()
    assert (arms[:100] == assign_arms(ids[:100], ["control", "icg"], salt="exp1")).all()
    other = assign_arms(ids, ["control", "icg"], salt="exp2")
    assert 0.45 < (arms == other).mean() < 0.55  # another salt reshuffles independently
    counts = {a: int((arms == k).sum()) for k, a in enumerate(["control", "icg"])}
    assert not srm_check(counts, {"control": 1, "icg": 1})["mismatch"]
    thirds = assign_arms(ids, ["a", "b", "c"], salt="x", weights=[2, 1, 1])
    assert abs((thirds == 0).mean() - 0.5) < 0.02


def test_srm_passes_on_a_null_split_and_fails_on_a_rigged_one():
    ids = [f"u{k:06d}" for k in range(40_000)]
    arms = assign_arms(ids, ["control", "icg"], salt="s")
    null = {"control": int((arms == 0).sum()), "icg": int((arms == 1).sum())}
    assert srm_check(null, {"control": 1, "icg": 1})["p_value"] > 0.001
    # rigged: the treatment loses 10% of its users (say, a logging bug on a slow page)
    rigged = {"control": null["control"], "icg": int(null["icg"] * 0.9)}
    assert srm_check(rigged, {"control": 1, "icg": 1})["mismatch"]


def _log(seed: int, n_users: int = 2000, lift_: float = 0.0, top_boost: bool = False):
    """An impression log with positions: exam(k) = 1/(1+k); the treatment's covers are
    `lift_` more attractive, or (top_boost) only shown higher up."""
    rng = np.random.default_rng(seed)
    users = np.array([f"u{k:05d}" for k in range(n_users)])
    user_arm = np.array(["control", "icg"])[assign_arms(users, ["control", "icg"], salt="t")]
    per_user = rng.poisson(15, n_users) + 1
    user, arm = np.repeat(users, per_user), np.repeat(user_arm, per_user)
    n = len(user)
    items = rng.integers(0, 200, n)
    pos = rng.integers(0, 10, n)
    treated = arm == "icg"
    if top_boost:
        pos = np.where(treated, pos // 3, pos)
    attract = 0.05 + 0.25 * (items % 7) / 6 * (1 + lift_ * treated)
    return pd.DataFrame({
        "event_id": [f"e{k}" for k in range(n)], "user_id": user, "item_id": items.astype(str),
        "cover": np.char.add(np.char.add(arm, "/"), items.astype(str)), "position": pos,
        "clicked": rng.random(n) < attract / (1 + pos),
        "timestamp": 1_700_000_000 + rng.integers(0, 3, n) * 86_400, "arm": arm,
    })  # fmt: skip


def test_pbm_recovers_the_examination_curve():
    log = _log(3, n_users=8000)
    doc = pd.factorize(log["cover"])[0]
    curve = fit_pbm(log["position"].to_numpy(), doc, log["clicked"].to_numpy())
    np.testing.assert_allclose(curve, 1 / (1 + np.arange(10)), rtol=0.1)


def test_a_ranker_that_moves_covers_up_fakes_a_ctr_lift_but_not_an_adjusted_one():
    report = ab_report(_log(4, top_boost=True), "arm", control="control")
    ctr, adj = report["lift"]["icg"]["ctr"], report["lift"]["icg"]["adjusted_ctr"]
    assert ctr["low"] > 0.3  # shown higher, clicked more
    assert adj["low"] < 0 < adj["high"]  # no more attractive


def test_report_files_from_a_plain_csv_log(tmp_path: Path):
    data = tmp_path / "log"
    data.mkdir()
    _log(5, n_users=600, lift_=0.3).drop(columns=["event_id"]).to_csv(
        data / "impressions.csv", index=False
    )
    log = load_log(data, "arm")
    report = ab_report(log, "arm", control="control", bootstrap=200)
    out = write_report(report, tmp_path / "ab")
    saved = json.loads((out / "ab.json").read_text())
    assert set(saved["arms"]) == {"control", "icg"}
    assert saved["lift"]["icg"]["ctr"]["low"] > 0
    assert {"activity", "day"} <= set(saved["segments"])
    assert len(saved["segments"]["day"]) == 3
    needed = saved["lift"]["icg"]
    assert 0 < needed["users_needed_per_arm"] < float("inf")
    assert needed["impressions_needed_per_arm"] > needed["users_needed_per_arm"]
    html = (out / "ab.html").read_text()
    assert "<svg" in html and "icg: day day 002" in html and "http" not in html.split("<svg")[0]


def test_bad_rows_are_named(tmp_path: Path):
    frame = _log(6, n_users=20)
    frame["clicked"] = frame["clicked"].astype(str)
    frame.loc[7, "clicked"] = "maybe"
    frame.to_csv(tmp_path / "impressions.csv", index=False)
    with pytest.raises(DataError, match=r"row 7: clicked='maybe'"):
        load_log(tmp_path, "arm")
    with pytest.raises(DataError, match="missing column 'variant'"):
        load_log(tmp_path, "variant")


def test_unknown_control_is_refused():
    with pytest.raises(ValueError, match="control: 'ctrl' is not an arm"):
        ab_report(_log(7, n_users=50), "arm", control="ctrl")


def test_few_users_are_warned_about():
    report = ab_report(_log(8, n_users=12), "arm", control="control", bootstrap=100)
    assert any("unreliable" in w for w in report["warnings"])
    boot = report["lift"]["icg"]["bootstrap"]
    assert -1 < boot["low"] < boot["high"] < 100 and boot["replicates"] <= 100


def test_cli_writes_the_report(tmp_path: Path):
    from typer.testing import CliRunner

    from icg.cli import build_app

    (tmp_path / "log").mkdir()
    _log(9, n_users=300, lift_=0.3).to_parquet(tmp_path / "log" / "impressions.parquet")
    args = ["ab", "report", "--data", str(tmp_path / "log"), "--control", "control",
            "--out", str(tmp_path / "ab"), "--split", "control=1,icg=1"]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ab" / "ab.json").read_text())["warnings"] == []
    bad = CliRunner().invoke(build_app(), [*args[:-2], "--control", "nope"])
    assert bad.exit_code != 0 and "nope" in bad.output
