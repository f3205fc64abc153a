"""Atomic writes: every artifact icg writes appears whole or not at all.

A file or folder is written under a temporary name in its own folder (``.tmp-<name>-<random>``,
so a rename never crosses file systems) and renamed into place only once it is complete. A crash
leaves at most a ``.tmp-*`` sibling, never a torn artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp makes 0600


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it replaces ``path`` in one rename.

    Use it for writers that take a path (``image.save(tmp)``, ``frame.to_parquet(tmp)``,
    ``save_file(tensors, tmp)``). On an exception the temporary file is removed and ``path`` is
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}-")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, **kwargs: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars are written as floats)."""
    kwargs = {"indent": 2, "default": float, **kwargs}
    return atomic_write_text(path, json.dumps(obj, **kwargs) + "\n")


def atomic_write_yaml(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as YAML (safe dumper, key order kept) atomically."""

    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``.

    An existing ``target`` is moved aside only once the new folder is complete, then removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{TMP_PREFIX}{target.name}-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{TMP_PREFIX}old-{target.name}-"))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_save_dir(target: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_dir)`` (e.g. a ``save_pretrained``) and rename the folder to ``target``."""
    with atomic_dir(target) as tmp:
        write(tmp)
    return Path(target)
