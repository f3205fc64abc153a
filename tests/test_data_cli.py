"""`icg data validate` through Typer's CliRunner."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from icg.cli import build_app
from icg.data.testing import write_tiny_dataset

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(build_app(), ["data", "validate", *map(str, args)], env={"COLUMNS": "200"})


def test_usable(tmp_path):
    root = write_tiny_dataset(tmp_path / "d")
    result = invoke(root)
    assert result.exit_code == 0, result.output
    assert "impressions" in result.output and "usable" in result.output


def test_data_error_names_file_row_field(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", fmt="csv")
    frame = pd.read_csv(root / "items.csv")
    frame["title"] = None
    frame.to_csv(root / "items.csv", index=False)
    result = invoke(root)
    assert result.exit_code == 1
    assert "items.csv" in result.output and "row 0, field title: null" in result.output


def test_reject_fraction(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", fmt="csv", n_impressions=4)
    lines = (root / "impressions.csv").read_text().splitlines()
    lines[1] = lines[1].replace(",u0,", ",nobody,")
    lines[2] = lines[2].replace(",u1,", ",nobody,")
    (root / "impressions.csv").write_text("\n".join(lines) + "\n")
    strict = invoke(root, "--max-reject-fraction", "0.25", "--rejects-dir", tmp_path / "rej")
    assert strict.exit_code == 1
    assert "impressions.csv: 2 of 4 rows rejected" in strict.output
    assert "impressions.csv row 0, field user_id: unknown_user" in strict.output
    assert (tmp_path / "rej" / "impressions.parquet").is_file()
    lenient = invoke(root)  # default 0.5: 2 of 4 is not over the limit
    assert lenient.exit_code == 0, lenient.output
    assert "unknown_user: 2" in lenient.output


def test_not_a_folder(tmp_path):
    result = invoke(tmp_path / "missing")
    assert result.exit_code == 1 and "not a data folder" in result.output
