"""Resolving model references: ``zoo:NAME`` through ``icg.zoo``, anything else as a path or hub
id; a run folder to the ICG adapter folder inside it."""

from __future__ import annotations

from pathlib import Path

from icg.artifacts import refuse_pickle_weights
from icg.layout import ADAPTER_DIR, ICG_CONFIG_FILE
from icg.zoo import resolve


def resolve_model_path(name: str) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts.

    ``zoo:NAME`` is resolved by ``icg.zoo.resolve``; other strings are returned unchanged (a local
    path or a hub id). A local file or folder holding pickle-format weights is refused here,
    before any loader sees it (`icg.artifacts.refuse_pickle_weights`).

    Raises:
        ArtifactError: a local path with ``.bin``/``.ckpt``/``.pt``/``.pth`` weights.
    """
    if name.startswith("zoo:"):
        name = str(resolve(name))  # FileNotFoundError names the recipe when weights are missing
    refuse_pickle_weights(name)
    return name


def resolve_adapter_dir(path: str | Path) -> Path:
    """``RUN/align`` or ``RUN/align/adapter`` → the folder holding ``icg_config.json``."""
    path = Path(path)
    return path / ADAPTER_DIR if (path / ADAPTER_DIR / ICG_CONFIG_FILE).is_file() else path
