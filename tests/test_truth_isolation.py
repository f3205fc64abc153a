"""Training code never sees CoverWorld's hidden truth: no imports of it, no reads of truth/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from open_spy import spy_on_opens

SRC = Path(__file__).resolve().parents[1] / "src" / "icg"
# Packages that train or serve models, and the A/B analysis of real logs: they must not reach
# the truth.
TRAINING = ["data", "models", "rewards", "training", "pipeline.py", "generation.py", "batch", "ab"]
TRUTH_MODULES = (
    "icg.world.truth",
    "icg.world.readout",
    "icg.world.oracle",
    "icg.world.generate",
    "icg.evaluation",
)


def _files():
    for entry in TRAINING:
        path = SRC / entry
        yield from (
            sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
        )


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


@pytest.mark.parametrize("path", list(_files()), ids=lambda p: str(p.relative_to(SRC)))
def test_training_code_does_not_import_truth(path: Path):
    tree = ast.parse(path.read_text())
    bad = [m for m in _imports(tree) if m.startswith(TRUTH_MODULES)]
    assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_align_training_never_opens_truth(tmp_path: Path, monkeypatch):
    """Run a tiny stage-A training on a CoverWorld and watch every file it opens."""
    from model_fixtures import tiny_icg, tiny_qwen2vl  # noqa: F401

    from icg.world.config import WorldConfig
    from icg.world.generate import generate_world

    world = generate_world(
        tmp_path / "w", WorldConfig(n_items=5, n_users=6, n_impressions=300, embedding_dim=6)
    )
    from icg.config import load_config
    from icg.training.align import AlignConfig, run_align

    base, model = tiny_icg(user_dim=6)
    mllm, processor = model.encoder.mllm, model.encoder.processor
    cfg = load_config(
        AlignConfig,
        None,
        data=world,
        out=tmp_path / "run",
        max_steps=2,
        batch_size=2,
        checkpoint_every=1,
        num_meta_tokens=3,
        num_tokens=2,
        refiner_hidden_dim=8,
        targets="clicks",
    )
    opened = spy_on_opens(monkeypatch)
    run_align(cfg, base=base, mllm=mllm, processor=processor)
    monkeypatch.undo()
    assert opened, "the spy saw no file access"
    assert not [p for p in opened if "/truth/" in p or p.endswith("/truth")]
