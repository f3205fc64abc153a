"""Atomic writes: every artifact icg writes appears whole or not at all.

A file or folder is written under a temporary name in its own folder (``.tmp-<name>-<random>``,
so a rename never crosses file systems) and renamed into place only once it is complete. A crash
leaves at most a ``.tmp-*`` sibling, never a torn artifact.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent merges into one folder are not locked there
    fcntl = None  # type: ignore[assignment]

TMP_PREFIX = ".tmp-"
_OBJECT_REPR = re.compile(r"<(?:[A-Za-z_][\w.]*(?:\s[^<>]*)?|[^<>]*object at 0x[^<>]*)>")


def describe_error(err: BaseException) -> str:
    """A library's error message fit for ours: object reprs a decoder or reader puts in it
    (``<_io.BufferedReader name=16>``, ``'<Buffer>'``, ``<Foo object at 0x...>``) become "the
    file", so a message names our file (the caller adds it), never a Python object."""
    text = _OBJECT_REPR.sub("the file", str(err)).strip()
    return text or type(err).__name__


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


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``path`` for the block: processes
    and threads that lock the same file run their blocks one at a time (a read-merge-write of a
    manifest, so concurrent writers into one folder keep every row). The lock file is created
    if missing (never through a symlink) and left in place: removing it would let a second
    writer lock a new file while the first still holds the old one."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class DiskFullError(OSError):
    """The disk filled up during a write; what the interrupted command wrote was removed."""


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is "no space left on device" (or a quota exceeded)."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(err: OSError, what: str, removed: int = 0) -> DiskFullError:
    """One line for a full disk: where, what was undone, and what to do."""
    where = f" writing {err.filename}" if err.filename else ""
    undone = f"; removed the {removed} file(s) it left without a manifest" if removed else ""
    return DiskFullError(
        err.errno, f"no space left on the device{where} during {what}{undone}; free some space "
        "and run the same command again"
    )  # fmt: skip


def _files(root: Path) -> dict[Path, tuple[int, int]]:
    """Every regular file under ``root`` (symlinks not followed) → (size, mtime_ns)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in files:
            path = Path(folder) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                out[path] = (st.st_size, st.st_mtime_ns)
    return out


@contextmanager
def undo_on_disk_full(out: str | Path, what: str) -> Iterator[None]:
    """Run a command's writes into ``out``; when the disk fills up, remove every file the block
    created or changed there (so no cover is left without its manifest) and raise one
    `DiskFullError` line instead of a traceback."""
    out = Path(out)
    before = _files(out) if out.is_dir() else {}
    try:
        yield
    except OSError as err:
        if not is_disk_full(err) or isinstance(err, DiskFullError):
            raise
        written = (
            [p for p, sig in _files(out).items() if before.get(p) != sig] if out.is_dir() else []
        )
        for path in written:
            path.unlink(missing_ok=True)
        raise disk_full_error(err, what, len(written)) from err
