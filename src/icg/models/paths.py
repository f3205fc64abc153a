"""Resolving model names: ``zoo:NAME`` through ``icg.zoo``, anything else as a path or hub id."""

from __future__ import annotations


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
