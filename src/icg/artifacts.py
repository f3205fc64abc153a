"""Loading saved artifacts as untrusted input: every failure is an `ArtifactError` naming the
file and the problem, never a traceback from deep inside a loader, and never a silent load.

Checked before any weight reaches a model: the config is a JSON object that builds the class
(built on the ``meta`` device, so a config cannot make us allocate), the safetensors header
parses and every entry's byte range fits the file (read from the header alone), the key set and every shape match what the config builds,
and every floating-point tensor is finite.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from icg.io import describe_error

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"


class ArtifactError(ValueError):
    """A saved model, checkpoint or statistics file that cannot be used as it is."""


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
"""Weight files in a pickle format: never handed to a loader (``torch.load`` would unpickle)."""
PICKLE_SCAN_DEPTH = 3
"""How deep `refuse_pickle_weights` looks: a pipeline folder, its component folders, a level more."""


def refuse_pickle_weights(name_or_path: str | Path, what: str = "model") -> None:
    """Refuse a local model file or folder that holds pickle-format weights, before any loader
    (diffusers, transformers, ``torch.load``) sees it. A name that is not a local path (a hub
    id) is left to the loader.

    Args:
        name_or_path: what the user named (``--base``, ``--mllm``, ``--clip``, an adapter, or the
            ``base_model`` / ``mllm`` an ``icg_config.json`` records).
        what: how the message names it.

    Raises:
        ArtifactError: naming the first pickle file found (``.bin``, ``.ckpt``, ``.pt``,
            ``.pth``, ``.pkl``, ``.pickle``) and what to do instead.
    """
    path = Path(os.path.expanduser(str(name_or_path)))
    if not path.exists():
        return
    found = _pickle_file(path, PICKLE_SCAN_DEPTH)
    if found is not None:
        shown = found.relative_to(path) if found != path else found.name
        raise ArtifactError(
            f"{what} {path}: holds pickle-format weights ({shown}); icg loads only safetensors "
            "and never unpickles a file: convert it to .safetensors or remove it"
        )


def _pickle_file(path: Path, depth: int) -> Path | None:
    if path.name.lower().endswith(PICKLE_SUFFIXES) and not path.is_dir():
        return path
    if depth <= 0 or not path.is_dir():
        return None
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return None
    for entry in entries:
        if entry.name.startswith("."):  # .git, .cache: not what a loader reads
            continue
        found = _pickle_file(entry, depth - 1)
        if found is not None:
            return found
    return None


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
        raise ArtifactError(f"{path}: unreadable ({describe_error(err)})") from err
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from err
    if not isinstance(value, dict):
        raise ArtifactError(f"{path}: expected {what}, got a JSON {type(value).__name__}")
    return value


MAX_HEADER_BYTES = 100 * 2**20
"""The largest safetensors JSON header read (the safetensors library's own limit)."""

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def read_safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{key: (dtype, shape)}`` of a safetensors file, read from its header alone (no tensor
    is read): the header length is within the file and `MAX_HEADER_BYTES`, every entry's byte
    range matches its dtype and shape, and the ranges fit in the file.

    Raises:
        ArtifactError: missing, truncated or not safetensors, naming the file and the entry.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ArtifactError(f"{path}: truncated or not a safetensors file ({size} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise ArtifactError(
                    f"{path}: truncated or not a safetensors file (header of {length} bytes in a "
                    f"file of {size})"
                )
            raw = f.read(length)
    except FileNotFoundError as err:
        raise ArtifactError(f"{path}: missing; expected a safetensors file") from err
    except OSError as err:
        raise ArtifactError(f"{path}: unreadable ({err.strerror or err})") from err
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(
            f"{path}: truncated or not a safetensors file (header is not JSON)"
        ) from err
    if not isinstance(header, dict):
        raise ArtifactError(
            f"{path}: truncated or not a safetensors file (header is not a JSON object)"
        )
    data_bytes, out = size - 8 - length, {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape = entry["dtype"], tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
            need = math.prod(shape) * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path}: tensor {key!r} has a malformed header entry") from err
        if min(shape, default=0) < 0 or end - begin != need or not 0 <= begin <= end <= data_bytes:
            raise ArtifactError(
                f"{path}: truncated or not a safetensors file (tensor {key!r} ({dtype} "
                f"{shape}) claims bytes {begin}..{end}; the file holds {data_bytes} bytes of data)"
            )
        out[key] = (dtype, shape)
    return out


def read_safetensors(
    path: str | Path, expected: Mapping[str, Sequence[int]] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file, all floating tensors finite.

    The header is validated first (`read_safetensors_header`), and with ``expected`` (a state
    dict's shapes) the key set and every shape are checked against it before any tensor is
    read, so a header that declares a huge tensor never allocates.

    Raises:
        ArtifactError: missing, truncated or not safetensors, keys or shapes other than
            ``expected``, or a NaN/inf value (naming the tensor).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; expected a safetensors file")
    declared = read_safetensors_header(path)
    if expected is not None:
        check_shapes({k: shape for k, (_, shape) in declared.items()}, expected, path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ArtifactError(
            f"{path}: truncated or not a safetensors file ({describe_error(err)})"
        ) from err
    check_finite(tensors, path)
    return tensors, metadata


def check_finite(tensors: Mapping[str, torch.Tensor], file: str | Path) -> None:
    """Raise `ArtifactError` naming the first floating tensor with a NaN or infinite value."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ArtifactError(f"{file}: tensor {key!r} holds NaN or infinite values")


def check_shapes(
    shapes: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], file: str | Path
) -> None:
    """The key set and shapes of ``shapes`` equal ``expected``.

    Raises:
        ArtifactError: naming missing and unexpected keys, or the first wrong shape.
    """
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensor(s) {unexpected[:5]}")
        raise ArtifactError(f"{file}: {'; '.join(parts)}")
    for key, shape in expected.items():
        if tuple(shapes[key]) != tuple(shape):
            raise ArtifactError(
                f"{file}: tensor {key!r} has shape {tuple(shapes[key])}, the config "
                f"builds {tuple(shape)}"
            )


def check_state(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], file: str | Path
) -> None:
    """The key set and shapes of ``tensors`` equal ``expected`` (a state dict's shapes).

    Raises:
        ArtifactError: naming missing and unexpected keys, or the first wrong shape.
    """
    check_shapes({k: v.shape for k, v in tensors.items()}, expected, file)


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
        raise ArtifactError(
            f"{config_file}: not a valid {cls.__name__} config ({describe_error(err)})"
        ) from err
    weights = directory / WEIGHTS_NAME
    read_safetensors(weights, {k: v.shape for k, v in skeleton.state_dict().items()})
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
            raise ArtifactError(
                f"{path}: cannot load {cls.__name__} ({describe_error(err)})"
            ) from err
