"""zoo registry: resolve(), entries, model info, and the `icg zoo` CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from icg.cli import build_app
from icg.zoo import REGISTRY, WEIGHTS_DIR, get, list_models, resolve

runner = CliRunner()


def test_resolve_passes_through_paths_and_hub_ids(tmp_path) -> None:
    assert resolve(str(tmp_path)) == str(tmp_path)
    assert resolve("openai/clip-vit-large-patch14") == "openai/clip-vit-large-patch14"
    assert resolve("./my-model") == "./my-model"


def test_resolve_zoo_names() -> None:
    with pytest.raises(KeyError, match="unknown zoo model"):
        resolve("zoo:nope")
    for entry in REGISTRY.values():  # every shipped zoo model is in the package
        if not entry.shipped:
            continue
        assert entry.trained, f"{entry.path}: the shipped zoo:{entry.name} is missing"
        assert resolve(f"zoo:{entry.name}") == str(WEIGHTS_DIR / entry.name)


def test_a_recipe_without_shipped_weights_says_how_to_train_it() -> None:
    for entry in REGISTRY.values():
        if not entry.shipped and not entry.trained:
            with pytest.raises(FileNotFoundError, match=f"icg zoo train {entry.name}"):
                resolve(f"zoo:{entry.name}")


def test_a_missing_zoo_model_says_how_to_train_it(tmp_path, monkeypatch) -> None:
    import icg.zoo.registry as registry

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="icg zoo train"):
        resolve("zoo:clip")


def test_registry_entries() -> None:
    assert set(REGISTRY) == {"clip", "sd", "flow", "mllm", "aesthetic", "icg-adapter"}
    assert {n for n, e in REGISTRY.items() if e.shipped} == {"clip", "sd", "mllm", "aesthetic"}
    assert get("zoo:clip") is get("clip")
    for entry in REGISTRY.values():
        assert entry.recipe == f"icg.zoo.recipes.{entry.name.replace('-', '_')}"
        module = entry.recipe_module()
        assert callable(module.train) and callable(module.evaluate)


def test_list_models_reads_gates() -> None:
    infos = {i["name"]: i for i in list_models()}
    assert set(infos) == set(REGISTRY)
    for name, info in infos.items():
        if not REGISTRY[name].shipped and not info["present"]:
            continue
        assert info["present"], name
        assert info["parameters"] > 0 and info["size_bytes"] > 0, (name, info)
        assert set(info["thresholds"]) <= set(info["metrics"])


def test_cli_list_and_path() -> None:
    app = build_app()
    result = runner.invoke(app, ["zoo", "list"])
    assert result.exit_code == 0, result.output
    for name in REGISTRY:
        assert name in result.output
    result = runner.invoke(app, ["zoo", "path", "nope"])
    assert result.exit_code != 0 and "unknown zoo model" in result.output
    result = runner.invoke(app, ["zoo", "path", "clip"])
    assert result.exit_code == 0
    assert result.output.strip() == str(WEIGHTS_DIR / "clip")


def test_cli_evaluate_json(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`icg zoo evaluate NAME --json` prints the recipe's metrics, thresholds and verdict."""
    import icg.zoo.recipes.aesthetic as recipe

    seen = {}

    def fake_evaluate(path, world_dir):
        seen["args"] = (path, world_dir)
        return {"spearman": 0.9, "n": 3.0}

    monkeypatch.setattr(recipe, "evaluate", fake_evaluate)
    result = runner.invoke(
        build_app(),
        [
            "zoo",
            "evaluate",
            "aesthetic",
            "--world",
            str(tmp_path),
            "--path",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["metrics"] == {"spearman": 0.9, "n": 3.0}
    assert out["thresholds"] == {"spearman": 0.8} and out["passed"] is True
    assert seen["args"] == (str(tmp_path), tmp_path)


def test_cli_train_dry_run_prints_config(tmp_path) -> None:
    result = runner.invoke(
        build_app(), ["zoo", "train", "clip", "--out", str(tmp_path), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["config"]["batch_size"] > 0 and out["name"] == "clip"
    assert not any(tmp_path.iterdir())  # nothing trained
