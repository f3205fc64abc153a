"""The input side of the hostile-data policy (SECURITY.md): caps, characters, paths, file types.

Every check here is per row: a value that fails becomes a reject with a reason, never a failure
of the whole table. Files are typed with ``stat`` before anything opens them, so a FIFO, a device
or a folder in place of a file is rejected without being opened (opening a FIFO for reading
blocks until a writer appears).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from icg.data.schemas import ColumnSpec, Kind, Reason
from icg.layout import TRUTH_DIR  # the simulator's hidden ground truth; nothing here reads it


@dataclass(frozen=True)
class Caps:
    """Size limits of one validation (`load_dataset(caps=...)`); a value over a limit rejects
    its row with reason ``too_long`` or ``embedding_magnitude``.

    Args:
        max_id_chars: ids and references (item_id, user_id, event_id).
        max_title_chars: titles (they go into MLLM and text-encoder prompts).
        max_description_chars: descriptions.
        max_text_chars: other known text columns (category).
        max_path_chars: image paths.
        max_field_chars: any other string value (extra columns passed through).
        max_embedding_dim: entries of one user embedding.
        max_embedding_abs: largest absolute entry of an embedding.
        max_embedding_norm_ratio: an embedding whose L2 norm exceeds this multiple of the table's
            median norm is an outlier (robust to the scale of the embeddings).
    """

    max_id_chars: int = 256
    max_title_chars: int = 1_000
    max_description_chars: int = 10_000
    max_text_chars: int = 1_000
    max_path_chars: int = 1_024
    max_field_chars: int = 65_536
    max_embedding_dim: int = 65_536
    max_embedding_abs: float = 1e4
    max_embedding_norm_ratio: float = 1e3


DEFAULT_CAPS = Caps()

CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # C0, DEL, undecodable bytes
_CONTROL_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")  # tab, newlines ok


def string_rule(col: ColumnSpec, caps: Caps) -> tuple[int, re.Pattern[str]]:
    """The length limit and forbidden characters of a known string column."""
    if col.kind is Kind.PATH:
        return caps.max_path_chars, CONTROL
    if col.unique or col.references:
        return caps.max_id_chars, CONTROL
    if col.name == "title":
        return caps.max_title_chars, CONTROL
    if col.name == "description":
        return caps.max_description_chars, _CONTROL_TEXT
    return caps.max_text_chars, CONTROL


def text_problem(
    value: object, limit: int, forbidden: re.Pattern[str]
) -> tuple[Reason, str] | None:
    """Why a string value is refused (too long, a control character, undecodable bytes), or
    None. Non-strings pass (their type is checked elsewhere)."""
    if not isinstance(value, str):
        return None
    if len(value) > limit:
        return Reason.TOO_LONG, f"{len(value)} characters, the limit is {limit}"
    bad = forbidden.search(value)
    if bad is not None:
        char = bad.group()
        what = "undecodable byte" if "\ud800" <= char <= "\udfff" else "control character"
        return Reason.CONTROL_CHARACTER, f"{what} {char!r} at offset {bad.start()}"
    return None


def string_issues(
    values: pd.Series, limit: int, forbidden: re.Pattern[str]
) -> list[tuple[object, Reason, str]]:
    """``(row, reason, detail)`` for every refused string of ``values`` (vectorised scan, then
    `text_problem` on the flagged rows only)."""
    if values.empty:
        return []
    text = values.where(values.map(lambda v: isinstance(v, str)))
    flagged = (text.str.len() > limit) | text.str.contains(forbidden.pattern, regex=True)
    flagged = flagged.fillna(False).astype(bool)
    out = []
    for row in values.index[flagged.to_numpy()]:
        problem = text_problem(values[row], limit, forbidden)
        if problem is not None:
            out.append((row, *problem))
    return out


def has_undecodable(values: list[str]) -> bool:
    """Whether any value holds a byte that was not valid UTF-8 (decoded with surrogateescape)."""
    return any(re.search(r"[\udc80-\udcff]", v) for v in values if v)


def embedding_problems(parsed: pd.Series, caps: Caps) -> tuple[pd.Series, pd.Series]:
    """Masks of embeddings with too many entries and of finite-but-extreme embeddings (an entry
    over ``max_embedding_abs`` or a norm over ``max_embedding_norm_ratio`` × the median norm)."""
    too_long = parsed.map(lambda v: v is not None and len(v) > caps.max_embedding_dim)
    ok = parsed.notna() & ~too_long.astype(bool)
    norms = parsed[ok].map(lambda v: float(np.linalg.norm(v.astype(np.float64))))
    peaks = parsed[ok].map(lambda v: float(np.abs(v).max(initial=0.0)))
    extreme = peaks > caps.max_embedding_abs
    median = float(norms[~extreme].median()) if (~extreme).any() else 0.0
    if median > 0:
        extreme |= norms > caps.max_embedding_norm_ratio * median
    mask = pd.Series(False, index=parsed.index)
    mask[extreme.index[extreme.to_numpy(dtype=bool)]] = True
    return too_long.astype(bool), mask


class NotRegularFileError(OSError):
    """A FIFO, device, folder or socket where a regular file is expected."""


def file_kind(mode: int) -> str:
    """``"FIFO"``, ``"device"``, ``"folder"``, ``"socket"`` or ``"special file"`` for a non-regular
    ``st_mode``."""
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for binary reading, refusing anything else before opening it.

    The type is read with ``stat`` (no open); the file is then opened non-blocking and checked
    again with ``fstat`` (same file, still regular), so a swap in between is caught too.

    Raises:
        FileNotFoundError: the path does not exist.
        NotRegularFileError: it is a folder, FIFO, device or socket (the message says which).
    """
    path = Path(path)
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise NotRegularFileError(f"is a {file_kind(before.st_mode)}, expected a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (
        before.st_dev,
        before.st_ino,
    ):
        os.close(fd)
        raise NotRegularFileError("changed while being opened")
    return os.fdopen(fd, "rb")


def resolve_input(value: str, root: Path) -> tuple[str | None, Reason | None, str]:
    """Turn a path relative to the data folder into an absolute one, refusing escapes.

    Refused: control characters (NUL included), absolute paths, ``..`` out of the folder, paths
    into ``truth/``, symlinks whose target leaves the folder (as ``..`` would) or enters
    ``truth/``, and anything that exists but is not a regular file (FIFO, device, folder), which
    is typed with ``stat`` and never opened.

    Args:
        value: the path as written in the table.
        root: the absolute, resolved data folder.

    Returns:
        (absolute path or None, reason or None, detail).
    """
    bad = CONTROL.search(value)
    if bad is not None:
        return None, Reason.CONTROL_CHARACTER, f"control character {bad.group()!r} in a path"
    rel = Path(value)
    if rel.is_absolute() or rel.drive or value.startswith("\\"):
        return None, Reason.BAD_PATH, "absolute path, expected one relative to the data folder"
    norm = os.path.normpath(value)
    parts = Path(norm).parts
    if not parts or parts[0] in (".", ".."):
        return None, Reason.BAD_PATH, "path leaves the data folder"
    if parts[0] == TRUTH_DIR:
        return None, Reason.FORBIDDEN_PATH, "paths under truth/ are never read"
    absolute = root / norm
    real = Path(os.path.realpath(absolute))
    if real != absolute:  # a symlink on the way: judge where it leads
        if not real.is_relative_to(root):
            return None, Reason.BAD_PATH, "symlink leads out of the data folder"
        if real.is_relative_to(root / TRUTH_DIR):
            return None, Reason.FORBIDDEN_PATH, "symlink into truth/, never read"
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return str(absolute), None, ""  # a missing image is the image check's to report
    except OSError as err:
        return None, Reason.BAD_PATH, f"cannot stat: {err.strerror}"
    if not stat.S_ISREG(mode):
        return None, Reason.NOT_A_FILE, f"is a {file_kind(mode)}, expected a regular file"
    return str(absolute), None, ""
