"""Repository hygiene: what git tracks ships no stray weights and no path of a build machine.

Both checks read ``git ls-files``, so they run in a git checkout and skip elsewhere (an sdist or a
wheel has no history to keep clean).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = PurePosixPath(Path(__file__).resolve().relative_to(ROOT).as_posix())

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf"}
# The only folders that ship weights: the coverworld-tiny models and the truth's oracle.
WEIGHT_FOLDERS = ("src/icg/zoo/weights/", "src/icg/world/oracle/")

TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".json",
    ".yaml",
    ".yml",
    ".toml",
    ".txt",
    ".cfg",
    ".html",
    ".sh",
    ".jinja",
}
TEXT_NAMES = {"Makefile"}

# An absolute path on the machine that trained or measured something: the root or a user's home,
# the shared work folder, or a named file or folder under /tmp. The look-behind keeps URLs
# ("https://host/work/x") and relative paths ("docs/work/x") out.
MACHINE_PATH = re.compile(r"(?<![\w.~$-])(?:/root/|/home/[\w.-]+/|/work/|/tmp/[\w.-]+)")

# Exact (file, path) pairs that are allowed, each with its reason. Keep it short and precise: a
# new entry needs a reason a reviewer accepts.
ALLOWED_MACHINE_PATHS: dict[str, tuple[set[str], str]] = {
    "benchmarks/base_comparison.py": (
        {"/tmp/sd-v4", "/tmp/bc"},
        "usage example in the module docstring: scratch folders a reader picks",
    ),
    "benchmarks/batch_quality.py": (
        {"/tmp/batch-quality"},
        "usage example in the module docstring: a scratch output folder",
    ),
    "benchmarks/bench_batch.py": (
        {"/tmp/bench-batch"},
        "usage example in the module docstring: a scratch output folder",
    ),
    "benchmarks/bench_preference.py": (
        {"/tmp/bench_world", "/tmp/icg_bench_world"},
        "usage example and the --world default: a scratch world the benchmark regenerates",
    ),
    "benchmarks/trainer_comparison.py": (
        {"/tmp/tc"},
        "usage example in the module docstring: a scratch output folder",
    ),
}


# Whole files left out, each with its reason.
SKIPPED_FILES = {
    str(THIS_FILE): "this test spells out the pattern, its examples and its allow-list"
}


def tracked_files() -> list[PurePosixPath]:
    """Every path git tracks in this checkout; skips the test outside a git checkout."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    top = subprocess.run(
        [git, "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True
    )
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != ROOT:
        pytest.skip(f"{ROOT} is not the root of a git checkout (an sdist or an installed copy)")
    listed = subprocess.run(
        [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode("utf-8")
    return [PurePosixPath(p) for p in listed.split("\0") if p]


def stray_weights(paths: list[PurePosixPath]) -> list[str]:
    """Tracked weight files outside the folders that ship weights."""
    return sorted(
        str(p)
        for p in paths
        if p.suffix.lower() in WEIGHT_SUFFIXES and not str(p).startswith(WEIGHT_FOLDERS)
    )


def machine_paths(paths: list[PurePosixPath]) -> list[str]:
    """``file:line: path`` for every machine path in a tracked text file that is not allowed."""
    found = []
    for rel in paths:
        if rel.suffix.lower() not in TEXT_SUFFIXES and rel.name not in TEXT_NAMES:
            continue
        if str(rel) in SKIPPED_FILES:
            continue
        file = ROOT / rel
        if not file.is_file():  # deleted in the work tree, not yet in the index
            continue
        allowed = ALLOWED_MACHINE_PATHS.get(str(rel), (set(), ""))[0]
        text = file.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            for match in MACHINE_PATH.finditer(line):
                if match.group(0) not in allowed:
                    found.append(f"{rel}:{number}: {match.group(0)}")
    return found


def test_the_pattern_finds_machine_paths_and_not_urls_or_relative_paths() -> None:
    hits = [
        "/work/main/demo-out/world",
        "/root/.cache/icg",
        "/home/alice/runs/x",
        "--out /tmp/sd-v4",
        '"base": "/tmp/sd-v2"',
        "file:///tmp/x.png",
    ]
    misses = [
        "demo-out/world",
        "https://download.pytorch.org/whl/cpu",
        "https://example.com/work/x",
        "docs/work/notes.md",
        "$HOME/work/x",
        "tmp_path / 'x'",
        "/opt/wheels/torch-2.13.0+cpu.whl",
    ]
    assert [s for s in hits if not MACHINE_PATH.search(s)] == []
    assert [s for s in misses if MACHINE_PATH.search(s)] == []


def test_no_weight_file_is_tracked_outside_the_shipped_weight_folders() -> None:
    stray = stray_weights(tracked_files())
    assert stray == [], (
        "weights belong in src/icg/zoo/weights or src/icg/world/oracle; training state and "
        f"work folders stay out of git: {stray}"
    )


def test_no_tracked_text_file_names_a_path_of_a_build_machine() -> None:
    found = machine_paths(tracked_files())
    assert found == [], (
        "write paths relative to the repository or as the command's arguments "
        "(demo-out/world, not /work/main/demo-out/world):\n" + "\n".join(found)
    )


def test_no_source_file_exceeds_400_lines() -> None:
    """Short files with one job each (docs/ARCHITECTURE.md): a file that grows past 400 lines
    is split where its jobs part."""
    lines = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted((ROOT / "src" / "icg").rglob("*.py"))
    }
    long = {name: n for name, n in lines.items() if n > 400}
    assert not long, f"files over 400 lines: {long}"
