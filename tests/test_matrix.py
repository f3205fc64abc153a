"""The recipe matrix (`icg bench recipes`): its interval math on synthetic numbers (runs, not
pairs, are the unit), the cache keys, resuming, recipe validation, the engines, and a tiny
matrix end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from icg.cli import build_app
from icg.matrix import (
    MatrixSpec,
    Recipe,
    RecipeError,
    config_hash,
    load_recipe,
    paired_difference,
    plan_matrix,
    run_matrix,
    seed_spread,
    t_interval,
)
from icg.matrix import jobs as matrix_jobs
from icg.matrix.engines import MatrixJobError, run_phase
from icg.matrix.plan import Job
from icg.matrix.stats import pooled_mean
from icg.matrix.table import markdown, summarise

# ---- interval math -------------------------------------------------------------------------


def test_t_interval_matches_scipy():
    diffs = [0.031, 0.052, 0.018, 0.044, 0.027, 0.039]
    got = t_interval(diffs)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert got.mean == pytest.approx(np.mean(diffs), abs=1e-12)
    assert (got.low, got.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert got.n == 6 and got.sd == pytest.approx(np.std(diffs, ddof=1))


def test_two_runs_give_a_wide_interval_even_when_both_gain():
    """Two runs: t_{0.975, 1} = 12.71, so two gains of +0.03 and +0.05 do not exclude 0."""
    got = t_interval([0.03, 0.05])
    assert got.mean == pytest.approx(0.04)
    half = 12.7062047 * np.std([0.03, 0.05], ddof=1) / np.sqrt(2)
    assert got.high - got.mean == pytest.approx(half, rel=1e-6)
    assert got.low < 0 < got.high
    assert t_interval([0.04]).as_dict()["low"] is None  # one run: no interval (JSON null)


def _runs(pairs_per_run: int, seed: int = 0) -> tuple[dict, dict]:
    """Per-run mean true CTR of two recipes on 3 worlds × 2 seeds: the recipe adds a known
    +0.02, each run adds its own training noise (sd 0.03), each pair its own noise (sd 0.2)."""
    rng = np.random.default_rng(seed)
    base, recipe = {}, {}
    for world in (3, 11, 5):
        for train_seed in (0, 1):
            run_noise = rng.normal(0.0, 0.03)
            pairs = rng.normal(0.0, 0.2, size=pairs_per_run)
            base[(world, train_seed)] = float(np.mean(0.30 + pairs))
            recipe[(world, train_seed)] = float(np.mean(0.32 + run_noise + pairs))
    return recipe, base


def test_runs_not_pairs_are_the_unit():
    """Many pairs per run make each run's mean exact but leave the training noise: the interval
    stays as wide as the runs' spread, while a pair-level interval would shrink towards 0."""
    few = paired_difference(*_runs(16))
    many = paired_difference(*_runs(100_000))
    assert few.n == many.n == 6  # runs, not pairs
    width = many.high - many.low
    # with exact run means the half-width is t_{0.975,5} * sd_runs / sqrt(6), sd_runs ~ 0.03
    assert 0.01 < width < 0.2
    # what a pair-level interval over the 600,000 pair differences would claim
    pair_level = 2 * 1.96 * 0.03 / np.sqrt(6 * 100_000)
    assert width > 100 * pair_level
    assert many.low < 0.02 < many.high  # covers the true gain
    # no convergence to zero width as pairs grow: the spread of the run means is what is left
    assert width > 0.5 * (few.high - few.low)


def test_paired_difference_uses_only_shared_runs_and_pairs_them():
    base = {(3, 0): 0.30, (3, 1): 0.20, (5, 0): 0.40}
    recipe = {(3, 0): 0.33, (3, 1): 0.23, (11, 0): 0.90}
    got = paired_difference(recipe, base)
    # paired: both shared runs gain exactly 0.03; unpaired means would differ by 0.28
    assert got.n == 2 and got.mean == pytest.approx(0.03) and got.sd == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no .* run in common"):
        paired_difference({(1, 0): 0.1}, base)


def test_seed_spread_is_max_minus_min_per_world_averaged():
    runs = {(3, 0): 0.30, (3, 1): 0.34, (11, 0): 0.20, (11, 1): 0.21, (5, 0): 0.5}
    assert seed_spread(runs) == pytest.approx((0.04 + 0.01 + 0.0) / 3)


def _cell(recipe: str, world: int, seed: int, one: float, best: float, variant: float = 0.25):
    ctr = {"one_draw": one, "best_of_k": best, "variant_select": variant, "reference": 0.2}
    return {"recipe": recipe, "world": world, "train_seed": seed, "true_ctr": ctr, "n_pairs": 256,
            "seconds": {"stage_b": 10.0 * (seed + 1) if recipe == "b" else None}}  # fmt: skip


def test_summary_rows_against_the_baseline():
    cells = [
        _cell("a", 3, 0, 0.30, 0.40), _cell("a", 3, 1, 0.32, 0.42),
        _cell("b", 3, 0, 0.34, 0.41), _cell("b", 3, 1, 0.35, 0.45),
    ]  # fmt: skip
    rows = summarise(cells, ["a", "b"], "a")
    assert "vs_baseline" not in rows["a"]
    b = rows["b"]
    assert b["cells"] == 2 and b["one_draw"]["mean"] == pytest.approx(0.345)
    assert b["one_draw"]["spread"] == pytest.approx(0.01)
    assert b["vs_baseline"]["one_draw"]["mean"] == pytest.approx(0.035)
    assert b["vs_baseline"]["best_of_k"]["mean"] == pytest.approx(0.02)
    assert b["one_draw_vs_variant_select"]["mean"] == pytest.approx(0.095)
    assert b["stage_b_seconds"] == pytest.approx(15.0) and rows["a"]["stage_b_seconds"] is None
    assert summarise([], ["a"], "a") == {"a": {"cells": 0}}


def test_pooled_mean_equals_the_mean_and_interval_of_the_pooled_sample():
    rng = np.random.default_rng(0)
    groups = [rng.normal(0.05, 0.1, n) for n in (40, 70)]
    summary = [{"n": len(g), "mean": g.mean(), "sd": g.std(ddof=1)} for g in groups]
    pooled = pooled_mean(summary)
    every = np.concatenate(groups)
    half = 1.959963984540054 * every.std(ddof=1) / np.sqrt(len(every))
    assert pooled["n"] == 110 and pooled["mean"] == pytest.approx(every.mean())
    assert pooled["ci_low"] == pytest.approx(every.mean() - half)
    assert pooled["ci_high"] == pytest.approx(every.mean() + half)


def test_summary_personal_gain_over_runs_and_per_world():
    cells = [_cell("a", w, s, 0.3, 0.4) for w in (3, 11) for s in (0, 1)]
    for cell, mean in zip(cells, (0.04, 0.06, 0.02, 0.02), strict=True):
        cell["personal_gain"] = {"mean": mean, "n": 100, "sd": 0.1}
    row = summarise(cells + [_cell("b", 3, 0, 0.3, 0.4)], ["a", "b"], "a")
    gain = row["a"]["personal_gain"]
    assert gain["runs"]["mean"] == pytest.approx(0.035) and gain["runs"]["n"] == 4
    assert gain["worlds"]["3"]["mean"] == pytest.approx(0.05) and gain["worlds"]["3"]["n"] == 200
    assert gain["worlds"]["11"]["ci_low"] < 0.02 < gain["worlds"]["11"]["ci_high"]
    assert "personal_gain" not in row["b"]  # its cell did not measure it
    assert row["a"]["code"] == ["unrecorded"]


def test_cells_of_other_code_versions_are_named_in_the_table():
    cells = [_cell("a", 3, 0, 0.3, 0.4), _cell("b", 3, 0, 0.3, 0.4)]
    cells[1]["code"] = "0123456789abcdef"
    rows = summarise(cells, ["a", "b"], "a")
    assert rows["b"]["code"] == ["0123456789abcdef"]
    text = markdown(rows, "a", "caption")
    assert "Cells from 2 code versions" in text and "b: 0123456789abcdef" in text
    assert "code versions" not in markdown(summarise(cells[:1], ["a"], "a"), "a", "caption")
    assert len(matrix_jobs.code_fingerprint()) == 16


def test_a_cell_asked_for_the_personal_control_is_not_done_without_it(tmp_path: Path):
    job = Job("cell", tmp_path, {"personal": True})
    (tmp_path / "result.json").write_text(json.dumps({"true_ctr": {}}))
    assert not matrix_jobs.job_done(job)
    assert matrix_jobs.job_done(Job("cell", tmp_path, {"personal": False}))
    (tmp_path / "result.json").write_text(json.dumps({"personal_gain": {"mean": 0.0}}))
    assert matrix_jobs.job_done(job)


# ---- plan, cache keys, resume ---------------------------------------------------------------
def _spec(*recipes: Recipe, **kw) -> MatrixSpec:
    return MatrixSpec(recipes=list(recipes), **{"worlds": [3], "train_seeds": 2, **kw})


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
    # pinned: a cache written by one process is found by another (no salted hash())
    assert config_hash({"a": 1}) == "015abd7f5cc57a2d"


def test_cells_are_keyed_by_their_settings_and_share_unchanged_stages(tmp_path: Path):
    a = Recipe(name="a")
    b = Recipe(name="b", reward={"learning_rate": 3e-4})
    alone = Recipe(name="alone", reward=None)
    plan = plan_matrix(_spec(a, b, alone, worlds=[3, 11]), tmp_path)
    assert [len(plan.phases[k]) for k in ("world", "preference", "align", "cell")] == [2, 4, 4, 12]
    again = plan_matrix(_spec(a, b, alone, worlds=[3, 11]), tmp_path)
    assert [c.job.dir for c in again.cells] == [c.job.dir for c in plan.cells]
    # a renamed recipe with the same settings reuses the cells; other settings do not
    renamed = plan_matrix(_spec(Recipe(name="other")), tmp_path)
    assert renamed.cells[0].job.dir == plan.cells[0].job.dir
    cells = {(c.recipe, c.world, c.train_seed): c.job for c in plan.cells}
    assert cells["a", 3, 0].dir != cells["b", 3, 0].dir != cells["alone", 3, 0].dir
    assert cells["a", 3, 0].payload["align"] == cells["b", 3, 0].payload["align"]
    assert cells["a", 3, 0].payload["align"] != cells["a", 3, 1].payload["align"]
    # the evaluation's pairs and noise depend on the world alone
    assert cells["a", 11, 0].payload["evaluation"] == cells["b", 11, 1].payload["evaluation"]
    assert cells["a", 11, 0].payload["evaluation"]["seed"] == 11
    # an evaluation setting is part of the key
    more = plan_matrix(_spec(a, candidates=4), tmp_path)
    assert more.cells[0].job.dir != plan.cells[0].job.dir
    assert more.cells[0].job.payload["align"] == plan.cells[0].job.payload["align"]


def _fake_runners(monkeypatch, ran: list[str], fail: str | None = None) -> None:
    """Replace the stage functions by ones that write each job's marker (and record the run)."""

    def runner(kind: str):
        def run(job: Job) -> None:
            ran.append(f"{kind}:{job.dir.name}")
            if fail is not None and job.dir.name == fail:
                raise RuntimeError("boom")
            if kind == "cell":
                label = job.payload["label"]
                ctr = 0.3 + 0.01 * label["train_seed"] + (0.02 if job.payload["stage_b"] else 0)
                result = {**label, "n_pairs": 4, "true_ctr": dict.fromkeys(
                    ("one_draw", "best_of_k", "variant_select", "reference"), ctr)}  # fmt: skip
                (job.dir / "result.json").write_text(json.dumps(result))
                return
            marker = job.dir / matrix_jobs.MARKERS[kind]
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("{}")

        return run

    monkeypatch.setattr(matrix_jobs, "RUNNERS", {k: runner(k) for k in matrix_jobs.RUNNERS})


def test_finished_cells_are_skipped_on_resume(tmp_path: Path, monkeypatch):
    ran: list[str] = []
    _fake_runners(monkeypatch, ran)
    spec = _spec(Recipe(name="b"), Recipe(name="a", reward=None), baseline="a")
    table = run_matrix(spec, tmp_path)
    assert sum(r.startswith("cell:") for r in ran) == 4 and len(ran) == 1 + 2 + 2 + 4
    assert table["recipes"]["b"]["vs_baseline"]["one_draw"]["mean"] == pytest.approx(0.02)
    assert "RUNS, not pairs" in (tmp_path / "matrix.md").read_text()
    ran.clear()
    run_matrix(spec, tmp_path)
    assert ran == []  # everything was done
    # one lost cell result: only that cell runs again
    plan = plan_matrix(spec, tmp_path)
    (plan.cells[1].job.dir / "result.json").unlink()
    run_matrix(spec, tmp_path)
    assert ran == [f"cell:{plan.cells[1].job.dir.name}"]


def test_an_interrupted_training_stage_resumes_from_its_checkpoints(tmp_path: Path, monkeypatch):
    """A stage-A folder that holds a started run (run.json) continues it; a fresh one starts
    over (its folder is named by its config's hash, so a started run is always the same run)."""
    calls: list[dict] = []
    monkeypatch.setattr(matrix_jobs, "run_align", lambda cfg, **kw: calls.append(kw))
    (tmp_path / "w").mkdir()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text("{}")
    job = Job("align", tmp_path / "a", {"world": str(tmp_path / "w"),
                                        "preference": str(tmp_path / "p"),
                                        "config": {"max_steps": 2, "seed": 0}})  # fmt: skip
    matrix_jobs.run_job(job)
    (job.dir / "run.json").write_text("{}")
    matrix_jobs.run_job(job)
    assert calls == [{"resume": False, "overwrite": True}, {"resume": True, "overwrite": False}]


def test_a_failed_cell_leaves_the_others_and_the_table(tmp_path: Path, monkeypatch):
    spec = _spec(Recipe(name="a"), Recipe(name="b", reward={"learning_rate": 1e-4}))
    bad = plan_matrix(spec, tmp_path).cells[0].job.dir.name
    ran: list[str] = []
    _fake_runners(monkeypatch, ran, fail=bad)
    with pytest.raises(MatrixJobError, match="1 job\\(s\\) failed") as err:
        run_matrix(spec, tmp_path)
    assert bad in str(err.value) and "boom" in str(err.value)
    table = json.loads((tmp_path / "matrix.json").read_text())
    assert len(table["cells"]) == 3 and table["recipes"]["a"]["cells"] == 1


def test_a_failed_stage_a_skips_only_the_cells_that_read_it(tmp_path: Path, monkeypatch):
    spec = _spec(Recipe(name="a"), Recipe(name="b", align={"learning_rate": 1e-4}))
    plan = plan_matrix(spec, tmp_path)
    bad = next(j for j in plan.phases["align"] if j.payload["config"].get("learning_rate")
               and j.payload["config"]["seed"] == 0)  # fmt: skip
    ran: list[str] = []
    _fake_runners(monkeypatch, ran, fail=bad.dir.name)
    with pytest.raises(MatrixJobError) as err:
        run_matrix(spec, tmp_path)
    skipped = [c for c in plan.cells if c.job.payload["align"] == str(bad.dir)]
    assert len(skipped) == 1 and f"skipped, it reads {bad.dir}" in str(err.value)
    assert f"cell:{skipped[0].job.dir.name}" not in ran
    table = json.loads((tmp_path / "matrix.json").read_text())
    assert len(table["cells"]) == 3  # every other cell ran


def test_process_engine_runs_a_job_in_its_own_process(tmp_path: Path):
    world = {"seed": 1, "n_items": 5, "n_users": 4, "n_impressions": 40}
    job = Job("world", tmp_path / "worlds" / "w", world)
    assert run_phase([job], "process", 1, tmp_path) == 1
    assert (job.dir / "world.yaml").is_file() and (job.dir / "truth").is_dir()
    assert (tmp_path / "logs" / "world-w.log").is_file()
    assert run_phase([job], "process", 1, tmp_path) == 0  # done: not started again
    broken = Job("preference", tmp_path / "preference" / "p", {"world": "/nonexistent",
                                                               "config": {"seed": 0}})  # fmt: skip
    with pytest.raises(MatrixJobError, match="exit code"):
        run_phase([broken], "process", 1, tmp_path)


@pytest.mark.slow  # starts a local Ray instance: tens of seconds
def test_ray_engine_runs_jobs_as_ray_tasks(tmp_path: Path):
    pytest.importorskip("ray", reason="ray is not installed here (pip install 'icg[ray]')")
    jobs = [
        Job("world", tmp_path / "worlds" / f"w{s}",
            {"seed": s, "n_items": 5, "n_users": 4, "n_impressions": 40})
        for s in (1, 2)
    ]  # fmt: skip
    assert run_phase(jobs, "ray", 2, tmp_path) == 2
    assert all((j.dir / "world.yaml").is_file() for j in jobs)
    broken = Job("preference", tmp_path / "preference" / "p",
                 {"world": "/nonexistent", "config": {"seed": 0}})  # fmt: skip
    with pytest.raises(MatrixJobError, match="/nonexistent"):
        run_phase([broken], "ray", 1, tmp_path)


# ---- recipe files ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("align: {max_stepz: 3}", "align.max_stepz"),
        ("reward: {learning_rate: -1}", "reward.learning_rate"),
        ("reward: {trainer: ppo}", "reward.trainer"),
        ("reward: {seed: 3}", "reward.seed"),
        ("reward: {guidance_scale: 2}", "reward.guidance_scale"),
        ("align: {data: /elsewhere}", "align.data"),
        ("preference: {epochs: 0}", "preference.epochs"),
        ("sampling: {num_inference_steps: 0}", "sampling.num_inference_steps"),
        ("stage_b: false", "stage_b"),
        ("name: 'a b'", "name"),
    ],
)
def test_a_bad_recipe_names_the_file_and_field(tmp_path: Path, text: str, field: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: {field}")


def test_recipe_files_load_with_the_demos_settings(tmp_path: Path):
    docs = Path(__file__).resolve().parents[1] / "docs" / "recipes"
    shipped, alone = load_recipe(docs / "shipped.yaml"), load_recipe(docs / "stage-a-only.yaml")
    assert shipped.name == "shipped" and shipped.trains_stage_b and not alone.trains_stage_b
    cfg = shipped.reward_config(1)
    assert cfg["max_steps"] == 60 and cfg["seed"] == 1 and cfg["num_inference_steps"] == 10
    assert shipped.align_config(1) == alone.align_config(1) == {"max_steps": 1000, "seed": 1}
    (tmp_path / "lr.yaml").write_text("reward: {learning_rate: 3.0e-4}\n")
    assert load_recipe(tmp_path / "lr.yaml").name == "lr"  # the file name by default
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "none.yaml")


def test_cli_dry_run_prints_cells_and_refuses_a_bad_recipe(tmp_path: Path):
    docs = Path(__file__).resolve().parents[1] / "docs" / "recipes"
    args = ["bench", "recipes", "--recipe", str(docs / "shipped.yaml"), "--recipe",
            str(docs / "stage-a-only.yaml"), "--baseline", "stage-a-only", "--worlds", "3,11",
            "--out", str(tmp_path / "m"), "--dry-run"]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["jobs"] == {"world": 2, "preference": 4, "align": 4, "cell": 8}
    assert shown["pairs_per_world"] == "16x16" and shown["spec"]["baseline"] == "stage-a-only"
    assert shown["cells"][0]["align"]["max_steps"] == 1000
    assert not (tmp_path / "m").exists()
    (tmp_path / "bad.yaml").write_text("align: {max_stepz: 3}\n")
    result = CliRunner().invoke(build_app(), [*args[:3], str(tmp_path / "bad.yaml"), *args[4:]])
    assert result.exit_code != 0 and "align.max_stepz" in result.output
    result = CliRunner().invoke(build_app(), [*args, "--baseline", "nope"])
    assert result.exit_code != 0 and "baseline" in result.output


# ---- end to end -----------------------------------------------------------------------------
TINY = {
    "align": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 1},
    "sampling": {"num_inference_steps": 2},
}


@pytest.mark.slow  # trains 2 stage A, 2 stage B and evaluates 4 cells on the zoo models: minutes
def test_tiny_matrix_end_to_end(tmp_path: Path):
    """2 recipes × 1 world × 2 training seeds on a 30-item world with the coverworld-tiny models:
    stage B against stage A alone, every cell evaluated on the truth, then resumed for free."""
    b = Recipe(name="stage-b", reward={"max_steps": 2, "batch_size": 2}, **TINY)
    a = Recipe(name="stage-a", reward=None, calibration_steps=1, **TINY)
    spec = _spec(b, a, baseline="stage-a", pairs=4, candidates=2, world_size=(30, 20, 2000))
    table = run_matrix(spec, tmp_path)
    assert len(table["cells"]) == 4
    for cell in table["cells"]:
        assert cell["n_pairs"] == 4
        assert all(0 < v < 1 for v in cell["true_ctr"].values())
        assert cell["seconds"]["stage_b"] > 0 and cell["seconds"]["evaluate"] > 0
    # the cells of a training seed share the world, the preference model and stage A
    assert len(list((tmp_path / "align").iterdir())) == 2
    # the same pairs and draws for both recipes; reference and variant-select do not depend on
    # stage B
    by = {(c["recipe"], c["train_seed"]): c for c in table["cells"]}
    for seed in (0, 1):
        one, other = by["stage-b", seed], by["stage-a", seed]
        assert one["true_ctr"]["reference"] == other["true_ctr"]["reference"]
        assert one["true_ctr"]["variant_select"] == other["true_ctr"]["variant_select"]
    row = table["recipes"]["stage-b"]["vs_baseline"]["one_draw"]
    assert row["n"] == 2 and row["low"] <= row["mean"] <= row["high"]
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("result.json")}
    run_matrix(spec, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("result.json")} == stamp
    # the personal-gain control added to the finished cells: no stage trains again
    adapters = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("adapter/*.safetensors")}
    table = run_matrix(spec.model_copy(update={"personal": True}), tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("adapter/*.safetensors")} == adapters
    for cell in table["cells"]:
        pairs = pd.read_parquet(tmp_path / cell["dir"] / "pairs.parquet")
        gain = (pairs["one_draw"] - pairs["swapped"]).dropna()
        assert cell["personal_gain"]["n"] == len(gain) > 0
        assert cell["personal_gain"]["mean"] == pytest.approx(gain.mean())
    assert table["recipes"]["stage-b"]["personal_gain"]["runs"]["n"] == 2
    assert "Personal gain" in (tmp_path / "matrix.md").read_text()
