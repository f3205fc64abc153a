"""`icg demo --quick` end to end on the shipped coverworld-tiny models, then `icg generate` and
`icg evaluate` on what it produced (the demo's run folder is the fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from icg.cli import build_app
from icg.evaluation.methods import METHODS
from icg.generation import is_marked_generated

# the module's fixture runs the whole quick demo (minutes on 2 cores), and every test but the
# last reads its folder
pytestmark = pytest.mark.slow

KEYS = (
    "fidelity_motif", "fidelity_palette", "true_aesthetic", "true_taste_match", "true_ctr",
    "lift_fraction",
    "true_ctr_coldstart", "aesthetic_reward", "clipscore", "preference_score", "diversity",
    "rec_auc", "rec_ndcg10", "n_pairs", "seconds",
)  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(build_app(), ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'eval' / 'report.html'}" in result.output
    assert (out / "world" / "truth").is_dir()
    # its console says the budget is a smoke test and that `make demo` gives the result
    assert "Smoke test, not a result" in result.output and "`make demo`" in result.output
    return out


def test_quick_demo_writes_every_method_and_stage(demo: Path):
    metrics = json.loads((demo / "eval" / "metrics.json").read_text())
    assert list(metrics["methods"]) == list(METHODS)
    assert metrics["world"]["n_items"] == 100
    for name, m in metrics["methods"].items():
        missing = [k for k in KEYS if k not in m]
        assert not missing, (name, missing)
        assert m["n_pairs"] == 24
    assert metrics["methods"]["reference"]["lift_fraction"] == 0.0
    assert metrics["methods"]["oracle"]["lift_fraction"] == 1.0
    gain = metrics["personal_gain"]  # 3 warm users × 6 items
    assert gain["n"] == 18 and gain["ci_low"] <= gain["mean"] <= gain["ci_high"]
    html = (demo / "eval" / "report.html").read_text()
    assert all(m in html for m in METHODS) and "data:image/png;base64" in html
    assert "Personal gain" in html
    # the report opens with the same warning, ahead of its verdict; metrics.json has no trace
    banner = html.index("<div class='banner'>Smoke test, not a result")
    assert banner < html.index("class='verdict'") < html.index("<h2>Metrics")
    assert "smoke" not in (demo / "eval" / "metrics.json").read_text().lower()
    for stage in ("align", "icg", "icg-aesthetic", "icg-relevance", "icg-preference"):
        assert (demo / "run" / stage / "config.yaml").is_file(), stage
    rows = [json.loads(line) for line in (demo / "run" / "icg" / "curves.jsonl").open()]
    assert any("probe" in r for r in rows) and any("reward/preference" in r for r in rows)
    manifest = pd.read_parquet(demo / "eval" / "covers" / "manifest.parquet")
    # the swap control's covers: icg-single's draws with another user (its own are reused)
    generated = set(METHODS) - {"reference", "oracle", "variant-select", "vae-roundtrip"}
    generated |= {"icg-swap"}
    assert set(manifest["method"]) == generated
    assert all(is_marked_generated(p) for p in manifest["path"])
    # best-of-2 under each run's own reward, except the single draws
    picked = manifest.groupby("method")["candidate"].max()
    single = ["icg-single", "icg-nouser-single", "icg-swap"]
    assert picked[single].eq(0).all()
    assert picked.drop([*single, "prompt", "mllm-prompt"]).le(1).all()
    metrics = json.loads((demo / "eval" / "metrics.json").read_text())["methods"]
    assert {"vae-roundtrip", "icg"} <= set(metrics)  # the fidelity ceiling beside the method
    # stage A distilled the user words, and stage B kept them
    for stage in ("align", "icg"):
        assert (demo / "run" / stage / "adapter" / "user_prompt" / "config.json").is_file()
    seeds = manifest.set_index(["method", "user_id", "item_id"])["seed"]
    assert seeds["icg-nouser-single"].equals(seeds["icg-single"])
    swap = seeds["icg-swap"]
    assert swap.equals(seeds["icg-single"].loc[swap.index])
    assert manifest.loc[manifest["method"] == "icg", "score"].notna().all()


def test_rerun_skips_finished_stages(demo: Path):
    result = CliRunner().invoke(build_app(), ["demo", "--quick", "--out", str(demo)])
    assert result.exit_code == 0, result.output
    for stage in ("world", "preference", "align", "reward icg"):
        assert f"{stage}: done already, skipped" in result.output


def test_rerun_with_other_models_is_refused_and_writes_nothing(demo: Path):
    record = json.loads((demo / "run" / "align" / "adapter" / "icg_config.json").read_text())
    assert record["base_model"] == "zoo:sd" and record["mllm"] == "zoo:mllm"
    before = sorted(p.relative_to(demo) for p in demo.rglob("*"))
    args = ["demo", "--quick", "--out", str(demo), "--base", "/models/other-sd"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code != 0
    assert "stage A was trained on" in result.output and "/models/other-sd" in result.output
    assert sorted(p.relative_to(demo) for p in demo.rglob("*")) == before


def test_rerun_with_another_training_seed_is_refused_and_writes_nothing(demo: Path):
    from icg.demo import DemoFolderError, run_demo

    before = sorted(p.relative_to(demo) for p in demo.rglob("*"))
    with pytest.raises(DemoFolderError, match=r"stage A was trained on \{'seed': 3\}"):
        run_demo(demo, quick=True, train_seed=4)
    assert sorted(p.relative_to(demo) for p in demo.rglob("*")) == before


def test_generate_segments_with_preference_pick(demo: Path, tmp_path: Path):
    run, world = demo / "run", demo / "world"
    args = [
        "generate", "--adapter", str(run / "icg"), "--data", str(world), "--out", str(tmp_path),
        "--users", "3", "--items", "2", "--segments", "2", "--preference", str(run / "preference"),
        "--strength", "0.6",
    ]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    assert len(manifest) == 6 and set(manifest["segment"]) <= {0, 1}
    assert manifest["path"].map(is_marked_generated).all()


def test_generate_best_of_k_with_the_runs_reward(demo: Path, tmp_path: Path):
    run, world = demo / "run", demo / "world"
    args = [
        "generate", "--adapter", str(run / "icg"), "--data", str(world), "--out", str(tmp_path),
        "--users", "2", "--items", "2", "--candidates", "3", "--steps", "4",
        "--user-guidance", "1.5",
    ]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    assert len(manifest) == 4 and set(manifest["candidate"]) <= {0, 1, 2}
    assert manifest["score"].notna().all() and len(list((tmp_path / "icg").glob("*.png"))) == 12
    # an adapter folder without the run's reward cannot rank candidates
    args[2], args[6] = str(run / "icg" / "adapter"), str(tmp_path / "other")  # a fresh --out
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code != 0 and "needs the stage-B run folder" in result.output


def test_evaluate_rejects_unknown_methods_and_missing_runs(demo: Path, tmp_path: Path):
    base = ["evaluate", "--data", str(demo / "world"), "--out", str(tmp_path)]
    result = CliRunner().invoke(
        build_app(), [*base, "--run", str(demo / "run"), "--methods", "icg,best"]
    )
    assert result.exit_code != 0 and "unknown ['best']" in result.output
    result = CliRunner().invoke(
        build_app(), [*base, "--run", str(tmp_path / "none"), "--methods", "icg"]
    )
    assert result.exit_code != 0 and "icg" in result.output
    assert not (tmp_path / "metrics.json").exists()
    result = CliRunner().invoke(
        build_app(), [*base, "--run", str(demo / "run"), "--user-guidance", "0.5", "--dry-run"]
    )
    assert result.exit_code == 0 and json.loads(result.output)["user_guidance"] == 0.5


def test_train_seed_trains_on_the_same_world_and_draws(tmp_path: Path, monkeypatch) -> None:
    """`--train-seed` reaches the preference model and both stages; the world and the
    evaluation keep `--seed` (so two demos differ only by their training)."""
    import icg.demo as demo
    from icg.demo import run_demo

    seen: dict[str, int] = {}

    def fake_preference(world, out, cfg):
        seen["preference"] = cfg.seed
        (out / "config.json").parent.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    def fake_align(cfg, resume):
        seen["align"] = cfg.seed

    def fake_reward(cfg, resume, callbacks):
        seen.setdefault("reward", cfg.seed)

    def fake_evaluate(world, run, out, cfg, overwrite, banner):
        seen["evaluate"] = cfg.seed
        seen["banner"] = banner

    monkeypatch.setattr(demo, "train_preference", fake_preference)
    monkeypatch.setattr(demo, "run_align", fake_align)
    monkeypatch.setattr(demo, "run_reward", fake_reward)
    monkeypatch.setattr(demo, "evaluate_run", fake_evaluate)
    monkeypatch.setattr(demo, "TruthProbe", lambda *a, **k: None)
    run_demo(tmp_path, quick=True, seed=3, train_seed=103, ablations=False)
    assert seen.pop("banner").startswith("Smoke test, not a result: `icg demo --quick`")
    assert seen == {"preference": 103, "align": 103, "reward": 103, "evaluate": 3}
    assert "seed: 3" in (tmp_path / "world" / "world.yaml").read_text()
    from icg.demo import QUICK

    run_demo(tmp_path, plan=QUICK, seed=3, train_seed=103)  # a chosen plan: no smoke-test banner
    assert seen["banner"] == ""
