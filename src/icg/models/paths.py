"""Resolving model references: ``zoo:NAME`` through ``icg.zoo``, anything else as a path or hub
id; a run folder to the ICG adapter folder inside it."""

from __future__ import annotations

from pathlib import Path


def resolve_model_path(name: str) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts.

    ``zoo:NAME`` is resolved by ``icg.zoo.resolve``; other strings are returned unchanged (a local
    path or a hub id).
    """
    if name.startswith("zoo:"):
        try:
            from icg.zoo import resolve
        except ImportError as err:
            raise ValueError(f"{name!r}: icg.zoo is not available to resolve zoo: names") from err
        return str(resolve(name))  # FileNotFoundError names the recipe when weights are missing
    return name


def resolve_adapter_dir(path: str | Path) -> Path:
    """``RUN/align`` or ``RUN/align/adapter`` → the folder holding ``icg_config.json``."""
    from icg.models.icg_model import ICG_CONFIG_NAME

    path = Path(path)
    return path / "adapter" if (path / "adapter" / ICG_CONFIG_NAME).is_file() else path
