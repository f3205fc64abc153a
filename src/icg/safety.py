"""Where icg may write: the output side of the hostile-input policy (SECURITY.md).

- An id that becomes part of a file name goes through `safe_name`: a plain id is kept, anything
  else (separators, dots, control or non-ASCII characters, reserved names, long ids) becomes a
  readable slug plus a hash of the id. The manifest keeps the mapping (id columns beside path).
- A name the user picks for a path component (``--method``) is checked by `check_name`.
- Every file written under an output folder goes through `output_path`, which refuses ``..``,
  absolute parts and symlinks between the folder and the file, so a write resolves under it.
- `prepare_output` refuses a non-empty output folder unless overwriting is asked for, refuses an
  output inside an input folder, and removes what interrupted writes left behind
  (`clean_leftovers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from icg.io import TMP_PREFIX, atomic_write_json
from icg.layout import MANIFEST_LOCK_FILE

logger = logging.getLogger(__name__)

MARKER = ".icg-output.json"
"""Written into every output folder icg creates; ``--overwrite`` clears only such folders."""
_BOOKKEEPING = {MARKER, MANIFEST_LOCK_FILE}  # never counted as contents, never removed

_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_HASHED = re.compile(r"-[0-9a-f]{12}$")  # how a `safe_name` with a hash ends
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{k}" for k in range(10))}
_RESERVED |= {f"LPT{k}" for k in range(10)}
_OLD_PREFIX = f"{TMP_PREFIX}old-"


class UnsafePathError(ValueError):
    """A write would leave its output folder, follow a symlink, or alias an input."""


class OutputExistsError(ValueError):
    """An output folder already holds results and overwriting was not asked for."""


def _plain(text: str) -> bool:
    return bool(_PLAIN.match(text)) and text.split(".")[0].upper() not in _RESERVED


def _digest(text: str, size: int = 6) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()


def safe_name(value: object) -> str:
    """A file-name component for an id, distinct for distinct ids even on a case-insensitive
    file system: the id itself when it is plain (ASCII lower-case letters, digits, ``.``, ``_``,
    ``-``, at most 100 characters, not starting with a dot, not a reserved device name, not
    ending like a hashed name), else a slug of it plus ``-`` and 12 hex digits of its BLAKE2b
    hash. So ``a1`` stays ``a1`` and ``A1`` becomes ``A1-<hash>``: a kept name never ends like a
    hashed one, and two hashed names differ in their (lower-case) hash.

    Args:
        value: the id (any value; its ``str`` is used).
    """
    text = str(value)
    if _plain(text) and text == text.lower() and not _HASHED.search(text):
        return text
    slug = _UNSAFE_RUN.sub("_", text).strip("._-")[:48] or "id"
    return f"{slug}-{_digest(text)}"


def file_stems(keys: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """A distinct file stem per key: its non-empty parts through `safe_name`, joined by ``_``.

    Stems that would clash (``("a_b", "c")`` and ``("a", "b_c")``, or ids that differ only in
    case, which clash on case-insensitive file systems) get a hash of the whole key appended.
    """
    keys = list(dict.fromkeys(keys))
    stems = {key: "_".join(safe_name(part) for part in key if part) for key in keys}
    for size in (6, 16):  # a longer hash only if a hashed stem met another stem (2**-48)
        groups: dict[str, list[tuple[str, ...]]] = {}
        for key, stem in stems.items():
            groups.setdefault(stem.lower(), []).append(key)
        clashing = [group for group in groups.values() if len(group) > 1]
        if not clashing:
            return stems
        for group in clashing:
            for key in group:
                stems[key] = f"{stems[key][:150]}-{_digest(repr(key), size)}"
    raise UnsafePathError(f"cannot give distinct file names to {len(clashing)} group(s) of ids")


def check_name(value: str, what: str) -> str:
    """``value`` unchanged when it is a plain path component (see `safe_name`), else ValueError
    naming ``what`` (e.g. ``"--method"``)."""
    if not isinstance(value, str) or not _plain(value):
        raise ValueError(
            f"{what}: {value!r} is not a plain name; expected 1-100 ASCII letters, digits, '.', "
            "'_' or '-', not starting with '.' or '-'"
        )
    return value


def _inside(path: Path, root: Path) -> bool:
    return os.path.realpath(path) == os.path.realpath(root) or Path(
        os.path.realpath(path)
    ).is_relative_to(os.path.realpath(root))


def output_path(root: str | Path, *parts: str) -> Path:
    """``root / parts...`` after checking that the result stays under ``root``.

    Each part is one path component (no separator, not ``.``/``..``, no NUL); no existing
    component between ``root`` and the file may be a symlink; the file itself, if it exists,
    must be a regular file or folder (never a symlink, FIFO or device).

    Raises:
        UnsafePathError: naming the part and the problem.
    """
    root = Path(root)
    path = root
    for part in parts:
        if (
            not part
            or part in (".", "..")
            or "/" in part
            or "\\" in part
            or "\x00" in part
            or Path(part).is_absolute()
        ):
            raise UnsafePathError(f"{root}: {part!r} is not a single safe path component")
        path = path / part
        if path.is_symlink():
            raise UnsafePathError(f"{path}: is a symlink; icg never writes through one")
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise UnsafePathError(f"{path}: exists and is not a regular file or folder")
    if not _inside(path.parent, root):
        raise UnsafePathError(f"{path}: resolves outside {root}")
    return path


def check_not_inside(out: str | Path, inputs: Iterable[str | Path | None], what: str) -> None:
    """Refuse an output folder that is, or lies inside, one of the input folders (the data
    folder is never written), or that contains an input file to be replaced."""
    for source in inputs:
        if source is None:
            continue
        if _inside(Path(out), Path(source)):
            raise UnsafePathError(
                f"{what} {out} is inside the input folder {source}; icg never writes into its "
                "inputs, choose a folder outside it"
            )


def clean_leftovers(folder: str | Path, depth: int = 3) -> list[Path]:
    """Remove what interrupted atomic writes left in ``folder`` (and ``depth - 1`` levels below):
    ``.tmp-*`` files and folders. A complete artifact that was moved aside
    (``.tmp-old-NAME-*/NAME``) whose replacement never arrived is moved back first.

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if depth <= 0 or not folder.is_dir() or folder.is_symlink():
        return []
    removed: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            continue
        if entry.name.startswith(_OLD_PREFIX) and entry.is_dir():
            for kept in entry.iterdir():
                if not (folder / kept.name).exists():
                    os.replace(kept, folder / kept.name)
                    logger.warning("restored %s from an interrupted replace", folder / kept.name)
        if entry.name.startswith(TMP_PREFIX):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir():
            removed += clean_leftovers(entry, depth - 1)
    if removed:
        logger.info("%s: removed %d leftover(s) of interrupted writes", folder, len(removed))
    return removed


def prepare_output(
    out: str | Path,
    *,
    kind: str,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    replace: Iterable[str] = (),
) -> Path:
    """Make ``out`` ready for a fresh ``kind`` output (``"generate"``, ``"evaluate"``).

    An empty or missing folder is created. A non-empty one is refused unless ``overwrite``;
    then a folder icg created for the same kind (it holds `MARKER`) is emptied, and in any other
    folder only the entries named in ``replace`` are removed (nothing else is ever deleted).

    Args:
        out: the output folder.
        kind: what is written there (recorded in the marker).
        overwrite: replace an existing output (``--overwrite``).
        inputs: folders that must not contain ``out`` (the data folder, the run folder).
        replace: entries to remove from a foreign folder when overwriting (e.g. a manifest that
            would otherwise be merged into).

    Raises:
        OutputExistsError: ``out`` holds something and ``overwrite`` is False.
        UnsafePathError: ``out`` is inside an input, or is not a folder.
    """
    out = Path(out)
    check_not_inside(out, inputs, "--out")
    if out.exists() and not out.is_dir():
        raise UnsafePathError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    held = sorted(e.name for e in out.iterdir() if e.name not in _BOOKKEEPING)
    if held and not overwrite:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise OutputExistsError(
            f"--out {out} is not empty (holds {shown}); pass --overwrite to replace its "
            "contents, or choose an empty folder"
        )
    if held:
        replace_entries(out, held, replace, ours=_marker_kind(out) == kind)
    atomic_write_json(out / MARKER, {"kind": kind, "format": 1})
    return out


def replace_entries(out: Path, held: list[str], replace, *, ours: bool) -> None:
    """What ``--overwrite`` removes from ``out``: everything ``held`` in a folder icg created
    (``ours``), else only the entries named in ``replace`` (a user's other files stay)."""
    for name in held if ours else [n for n in replace if n in held]:
        entry = out / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if not ours:
        logger.warning("%s: --overwrite into a folder icg did not create; kept other files", out)


def _marker_kind(out: Path) -> str | None:
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
