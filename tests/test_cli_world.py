"""The CLI contract of `icg world generate` and `icg data validate` (`icg demo --quick` is
tests/test_demo.py's module fixture: one quick demo for the whole suite)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from icg.cli import build_app

runner = CliRunner()


def test_world_generate_then_validate(tmp_path: Path):
    app = build_app()
    out = tmp_path / "W"
    args = ["world", "generate", "--out", str(out), "--items", "30", "--users", "20"]
    result = runner.invoke(app, [*args, "--impressions", "2000", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "impressions" in result.output
    assert len(pd.read_parquet(out / "impressions.parquet")) == 2000
    assert "n_items: 30" in (out / "world.yaml").read_text()
    result = runner.invoke(app, ["data", "validate", str(out)])
    assert result.exit_code == 0, result.output
    # a second generate into the same folder refuses unless told to overwrite
    result = runner.invoke(app, [*args, "--impressions", "2000"])
    assert result.exit_code != 0 and "not empty" in str(result.exception)


def test_world_generate_from_yaml(tmp_path: Path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text("n_items: 12\nn_users: 9\nn_impressions: 300\nn_variants: 2\n")
    result = runner.invoke(
        build_app(), ["world", "generate", "--out", str(tmp_path / "W"), "--config", str(cfg)]
    )
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "W" / "items.parquet")) == 12
