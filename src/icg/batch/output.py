"""The batch output folder, as careful as `icg generate`'s: refused before anything is written
when it is not batch's to write, verified on resume, cleaned of interrupted writes.

- A folder that holds anything and was not created by `icg batch` (no marker, no plan) is
  refused unless ``overwrite``, which then replaces only the entries batch writes.
- A symlink in place of an entry batch writes (``covers``, ``plan``, ...) or anywhere below
  ``covers/`` is refused, whatever ``overwrite`` says.
- Every check runs before the first write; only then are leftovers (``.tmp-*``) removed and the
  marker written.
- On resume every finished partition's covers are verified (PNG structure and CRCs, no
  decoding); a partition with a missing, empty or truncated cover is drawn again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

from icg.io import TMP_PREFIX, atomic_write_json
from icg.layout import (
    ASSIGNMENTS_FILE,
    BATCH_MANIFEST_DIR,
    COVERS_DIR,
    PLAN_DIR,
    PLAN_SETTINGS_FILE,
    REJECTS_DIR,
    SUMMARY_FILE,
)
from icg.safety import (
    MARKER,
    OutputExistsError,
    UnsafePathError,
    check_not_inside,
    clean_leftovers,
    replace_entries,
)

logger = logging.getLogger(__name__)

KIND = "batch"
ENTRIES = (PLAN_DIR, COVERS_DIR, BATCH_MANIFEST_DIR, REJECTS_DIR, ASSIGNMENTS_FILE, SUMMARY_FILE)
"""What batch writes under OUT; ``--overwrite`` of a foreign folder removes only these."""


def _marker_kind(out: Path) -> str | None:
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _symlinks(out: Path) -> list[str]:
    """Entries batch writes that are symlinks, and symlinks anywhere below ``covers/``."""
    found = [name for name in ENTRIES if (out / name).is_symlink()]
    covers = out / COVERS_DIR
    if covers.is_dir() and not covers.is_symlink():
        for folder, dirs, files in os.walk(covers):
            for name in dirs + files:
                if (Path(folder) / name).is_symlink():
                    found.append(str((Path(folder) / name).relative_to(out)))
    return found


def prepare_batch_output(
    out: str | Path,
    *,
    inputs: Iterable[str | Path | None],
    same_settings: Callable[[Path], bool],
    overwrite: bool = False,
) -> bool:
    """Check ``out`` for a batch run, then (only then) make it ready. Returns whether a plan of
    the same settings is there to resume.

    Args:
        out: the batch output folder.
        inputs: folders ``out`` must not lie inside (data, run).
        same_settings: whether ``out`` holds a plan of this run's settings (raises when it holds
            one of other settings).
        overwrite: replace what is there (``--overwrite``).

    Raises:
        OutputExistsError: ``out`` holds files batch did not write, and no ``overwrite``.
        UnsafePathError: ``out`` is inside an input, not a folder, or holds a symlink where
            batch writes.
        ValueError: ``out`` holds a plan of other settings (and no ``overwrite``).
    """
    out = Path(out)
    check_not_inside(out, inputs, "--out")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UnsafePathError(f"--out {out} exists and is not a folder (or is a symlink)")
    links = _symlinks(out) if out.is_dir() else []
    if links:
        raise UnsafePathError(
            f"--out {out}: {links[0]} is a symlink; icg never writes through one, remove it or "
            "choose another folder"
        )
    held = (
        sorted(
            e.name for e in out.iterdir() if e.name != MARKER and not e.name.startswith(TMP_PREFIX)
        )
        if out.is_dir()
        else []
    )
    ours = _marker_kind(out) == KIND or (
        not held or (out / PLAN_DIR / PLAN_SETTINGS_FILE).is_file()
    )
    if held and not ours and not overwrite:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise OutputExistsError(
            f"--out {out} is not empty and was not written by icg batch (holds {shown}); pass "
            "--overwrite to replace batch's entries there, or choose an empty folder"
        )
    resume = ours and not overwrite and held and same_settings(out)  # raises on other settings
    # every check has run: from here on, writes
    if overwrite and held:
        replace_entries(out, held, ENTRIES, ours=ours)
    out.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out, depth=4)  # OUT/covers/sNNNNN/.tmp-*, OUT/manifest/partition=*/.tmp-*
    if _marker_kind(out) != KIND:
        atomic_write_json(out / MARKER, {"kind": KIND, "format": 1})
    return bool(resume)


def cover_problem(path: Path) -> str | None:
    """What is wrong with a cover file (missing, empty, not a PNG, truncated, bad CRC), or None.
    Reads the chunk structure, never decodes the pixels."""
    try:
        if path.is_symlink() or not path.is_file():
            return "missing"
        if path.stat().st_size == 0:
            return "empty"
        with Image.open(path, formats=("PNG",)) as im:
            im.verify()
    except Exception as err:  # noqa: BLE001 - any failure means the cover must be drawn again
        return f"unreadable ({type(err).__name__})"
    return None


def damaged_partitions(
    out: Path, manifest, partition_of: Callable[[int], Iterable[str]]
) -> set[int]:
    """Finished partitions (rows of ``manifest``) with a cover that fails `cover_problem`; each
    damaged cover is removed so that the worker draws it again.

    Args:
        out: the batch output folder.
        manifest: the finished partitions' rows (``partition``, ``path``).
        partition_of: partition → every cover path (relative to ``out``) it wrote, candidates
            included.
    """
    damaged = set()
    for partition in sorted(set(int(p) for p in manifest["partition"])):
        for rel in partition_of(partition):
            problem = cover_problem(out / rel)
            if problem is None:
                continue
            logger.warning(
                "%s: %s cover; partition %d is drawn again", out / rel, problem, partition
            )
            (out / rel).unlink(missing_ok=True)
            damaged.add(partition)
    return damaged
