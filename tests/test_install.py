"""The Makefile's install logic: which Python it picks and where torch comes from.

`make -n -B install` prints the recipe without running it, so these tests see the commands a
fresh machine would run, with fake Pythons and wheel folders, and install nothing.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def fake_python(folder: Path, version: str) -> Path:
    """An executable that answers the Makefile's version probe as Python `version` would."""
    path = folder / f"fakepython{version}"
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def plan(*variables: str) -> list[str]:
    """The install recipe's commands for these make variables (nothing is run)."""
    env = {k: v for k, v in os.environ.items() if k not in {"PY", "TORCH_WHEEL", "TORCH_INDEX"}}
    out = subprocess.run(
        ["make", "-s", "-n", "-B", "-C", str(REPO), "install", *variables],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return out.stdout.splitlines()


def torch_line(lines: list[str]) -> str:
    (line,) = [x for x in lines if "pip install" in x and "torch" in x and "constraints" not in x]
    return line


def test_the_first_supported_python_is_picked(tmp_path: Path):
    old, new, other = (fake_python(tmp_path, v) for v in ("3.10", "3.12", "3.11"))
    lines = plan(f"PYTHONS={old} {new} {other}", f"WHEEL_DIR={tmp_path}")
    assert f"{new} -m venv .venv" in "\n".join(lines)


def test_no_supported_python_refuses_before_creating_anything(tmp_path: Path):
    old = fake_python(tmp_path, "3.10")
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-s", "-C", str(REPO), "install", f"PYTHONS={old} /nonexistent/python",
         f"VENV={venv}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no Python 3.11 3.12 3.13 found" in result.stdout + result.stderr
    assert "PY=" in result.stdout + result.stderr
    assert not venv.exists()


def test_a_local_cpu_wheel_for_that_python_is_installed_first(tmp_path: Path):
    py = fake_python(tmp_path, "3.12")
    for tag in ("cp311", "cp312"):
        (tmp_path / f"torch-2.13.0+cpu-{tag}-{tag}-manylinux_2_28_x86_64.whl").touch()
    lines = plan(f"PY={py}", f"WHEEL_DIR={tmp_path}")
    assert f'"{tmp_path}/torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl"' in torch_line(
        lines
    )
    # torch comes before the pinned dependencies, so none of them can pull another build
    assert lines.index(torch_line(lines)) < next(
        i for i, x in enumerate(lines) if "constraints" in x
    )


def test_without_a_local_wheel_the_pinned_torch_comes_by_name_from_the_index(tmp_path: Path):
    py = fake_python(tmp_path, "3.11")
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    assert torch_line(plan(f"PY={py}", f"WHEEL_DIR={empty}")).endswith('install -q "torch==2.13.0"')
    cpu = "https://download.pytorch.org/whl/cpu"
    line = torch_line(plan(f"PY={py}", f"WHEEL_DIR={empty}", f"TORCH_INDEX={cpu}"))
    assert line.endswith(f'--index-url {cpu} "torch==2.13.0"')


def test_an_explicit_wheel_wins(tmp_path: Path):
    py = fake_python(tmp_path, "3.11")
    wheel = tmp_path / "my-torch.whl"
    lines = plan(f"PY={py}", f"TORCH_WHEEL={wheel}", "TORCH_INDEX=https://example.invalid/simple")
    assert torch_line(lines).endswith(f'"{wheel}"')
