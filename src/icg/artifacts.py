"""Loading saved artifacts as untrusted input: every failure is an `ArtifactError` naming the
file and the problem, never a traceback from deep inside a loader, and never a silent load.

Checked before any weight reaches a model: the config is a JSON object that builds the class
(built on the ``meta`` device, so a config cannot make us allocate), the safetensors header
parses (a truncated file fails here), the key set and every shape match what the config builds,
and every floating-point tensor is finite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"


class ArtifactError(ValueError):
    """A saved model, checkpoint or statistics file that cannot be used as it is."""


def read_json_object(path: str | Path, what: str = "a JSON object") -> dict[str, Any]:
    """A JSON file that must hold an object.

    Raises:
        ArtifactError: missing, unreadable, not JSON, or not an object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ArtifactError(f"{path}: missing; expected {what}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: unreadable ({err})") from err
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from err
    if not isinstance(value, dict):
        raise ArtifactError(f"{path}: expected {what}, got a JSON {type(value).__name__}")
    return value


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file, all floating tensors finite.

    Raises:
        ArtifactError: missing, truncated or not safetensors, or a NaN/inf value (naming the
            tensor).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; expected a safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ArtifactError(f"{path}: truncated or not a safetensors file ({err})") from err
    check_finite(tensors, path)
    return tensors, metadata


def check_finite(tensors: Mapping[str, torch.Tensor], file: str | Path) -> None:
    """Raise `ArtifactError` naming the first floating tensor with a NaN or infinite value."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ArtifactError(f"{file}: tensor {key!r} holds NaN or infinite values")


def check_state(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], file: str | Path
) -> None:
    """The key set and shapes of ``tensors`` equal ``expected`` (a state dict's shapes).

    Raises:
        ArtifactError: naming missing and unexpected keys, or the first wrong shape.
    """
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensor(s) {unexpected[:5]}")
        raise ArtifactError(f"{file}: {'; '.join(parts)}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != tuple(shape):
            raise ArtifactError(
                f"{file}: tensor {key!r} has shape {tuple(tensors[key].shape)}, the config "
                f"builds {tuple(shape)}"
            )


def check_module_folder(cls: type, directory: str | Path) -> dict[str, Any]:
    """Validate a diffusers-style folder (``config.json`` + safetensors) for ``cls`` without
    loading it into a model; returns the config.

    Raises:
        ArtifactError: naming the file and the problem.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: missing; expected a saved {cls.__name__} folder")
    config_file = directory / CONFIG_NAME
    config = read_json_object(config_file, f"the {cls.__name__} config")
    recorded = config.get("_class_name")
    if recorded not in (None, cls.__name__):
        raise ArtifactError(f"{config_file}: describes a {recorded}, expected {cls.__name__}")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated, whatever the config says
            skeleton = cls.from_config(config)
    except Exception as err:  # noqa: BLE001 - any constructor failure means a bad config
        raise ArtifactError(f"{config_file}: not a valid {cls.__name__} config ({err})") from err
    weights = directory / WEIGHTS_NAME
    tensors, _ = read_safetensors(weights)
    check_state(tensors, {k: v.shape for k, v in skeleton.state_dict().items()}, weights)
    return config


class CheckedLoadMixin:
    """Put before ``ModelMixin`` in a model's bases: ``from_pretrained`` of a local folder is
    validated first (`check_module_folder`), and a loader failure becomes an `ArtifactError`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        path = Path(pretrained_model_name_or_path)
        if path.is_dir():
            check_module_folder(cls, path)
        elif path.exists() or str(pretrained_model_name_or_path).startswith((".", "/", "~")):
            raise ArtifactError(f"{path}: missing; expected a saved {cls.__name__} folder")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except ArtifactError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise ArtifactError(f"{path}: cannot load {cls.__name__} ({err})") from err
