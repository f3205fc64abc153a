"""Loading a base diffusers pipeline by name, components saved as absent included.

``DiffusionPipeline.from_pretrained`` drops the components a folder's ``model_index.json``
records as ``[null, null]`` and then refuses the folder when one of them is not in the
pipeline's ``_optional_components``: an SD3 folder saved without T5 (``text_encoder_3`` and
``tokenizer_3`` None, as diffusers' docs drop it) loads only when the caller passes them as
``None``. `load_base` does that for every such component, so a T5-less SD3 base (coverworld-tiny
`flow`) loads like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from icg.models.paths import resolve_model_path


def absent_components(folder: str | Path) -> dict[str, None]:
    """``{name: None}`` for each component a local pipeline folder records as ``[null, null]``
    (``{}`` for a hub id or a folder without ``model_index.json``)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text(encoding="utf-8"))
    return {
        name: None
        for name, value in entries.items()
        if not name.startswith("_") and isinstance(value, list) and value == [None, None]
    }


def load_base(name: str, **kwargs: Any) -> Any:
    """``DiffusionPipeline.from_pretrained`` of `name` (``zoo:NAME``, a path or a hub id, through
    `resolve_model_path`), its absent components passed as ``None`` (`absent_components`)."""
    path = resolve_model_path(name)
    return DiffusionPipeline.from_pretrained(path, **(absent_components(path) | kwargs))
