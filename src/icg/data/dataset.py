"""`load_dataset`: read, validate and cross-check a platform's items, users and impressions."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icg.data.errors import DataError
from icg.data.images import DEFAULT_MAX_PIXELS, ImageChecker
from icg.data.readers import SUFFIXES, find_table_file, read_raw
from icg.data.rejects import prepare_rejects_dir, write_rejects
from icg.data.report import ValidationReport
from icg.data.safety import DEFAULT_CAPS, TRUTH_DIR, Caps
from icg.data.schemas import IMPRESSIONS, ITEMS, USERS
from icg.data.validate import Refs, Validated, embedding_matrix, validate_table

logger = logging.getLogger(__name__)

TABLES = ("items", "users", "impressions")


@dataclass
class PlatformData:
    """A validated platform dataset.

    Args:
        root: the data folder (absolute).
        items: item_id, title, category, image (absolute path), [description], extra columns.
        users: user_id, embedding (np.ndarray float32 of length ``embedding_dim``), features.
        impressions: event_id, user_id, item_id, cover (absolute path), position (int64),
            clicked (bool), timestamp (int64 Unix seconds); None when absent and not required.
        report: what validation found.
        embedding_dim: the user embedding length (0 when users were not loaded).
        rejects: the rejected (file, row, field, value, reason) records by table.
    """

    root: Path
    items: pd.DataFrame | None
    users: pd.DataFrame | None
    impressions: pd.DataFrame | None
    report: ValidationReport
    embedding_dim: int
    rejects: dict[str, pd.DataFrame] = field(default_factory=dict)

    def user_embeddings(self) -> np.ndarray:
        """All user embeddings in ``users`` order: (U, D) float32."""
        if self.users is None:
            raise ValueError("no users table was loaded")
        return embedding_matrix(self.users)


def load_dataset(
    path: str | Path,
    *,
    rejects_dir: str | Path | None = None,
    check_images: bool = True,
    require: Iterable[str] = ("items", "users", "impressions"),
    embedding_dim: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    caps: Caps = DEFAULT_CAPS,
) -> PlatformData:
    """Load and validate a data folder holding ``items.*``, ``users.*`` and ``impressions.*``.

    The one validation: `icg data validate` and every training, generation and evaluation
    command call this with the same checks, so a row validation rejects never reaches them.
    Each table is read from parquet, CSV or JSONL (parquet preferred when several exist). Bad
    rows are rejected with their reasons (kept in ``PlatformData.rejects`` and, when
    ``rejects_dir`` is given, written to ``<rejects_dir>/<table>.parquet``); good rows are kept.
    Impressions must reference kept users and items. Nothing under ``<path>/truth/`` is ever
    read, and nothing in ``path`` is written unless ``rejects_dir`` names a folder there.

    Args:
        path: the data folder.
        rejects_dir: a dedicated folder for rejects (`icg.data.rejects.prepare_rejects_dir`);
            ``None`` writes none.
        check_images: open and decode every distinct image (items.image, impressions.cover)
            once: format allow-list, pixel limit, corruption. Paths are checked anyway.
        require: tables that must exist.
        embedding_dim: the expected user embedding length; default the majority length.
        max_pixels: the largest image (width × height) accepted.
        caps: length and magnitude limits per value (`icg.data.safety.Caps`).

    Raises:
        DataError: a required table or column is missing, a table file is unreadable, a table
            has no valid row, embedding lengths disagree with no majority, or ``rejects_dir``
            is not a dedicated folder.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a data folder (expected a directory)", file=root)
    require = tuple(require)
    unknown = sorted(set(require) - set(TABLES))
    if unknown:
        raise ValueError(f"require: unknown table(s) {unknown}, expected a subset of {TABLES}")
    files: dict[str, Path] = {}
    for spec in (ITEMS, USERS, IMPRESSIONS):
        file = find_table_file(root, spec.name)
        if file is None:
            if spec.name in require:
                names = ", ".join(f"{spec.name}{s}" for s in SUFFIXES)
                raise DataError(f"{root}: missing required table {spec.name!r} (one of {names})")
            logger.info("%s: no %s table, skipping", root, spec.name)
            continue
        if file.resolve().is_relative_to(root / TRUTH_DIR):
            raise DataError(f"{file}: table file links into truth/, which is never read", file=file)
        files[spec.name] = file
    rejects_root = None
    if rejects_dir is not None:
        rejects_root = prepare_rejects_dir(rejects_dir, root, files.values())
    checker = ImageChecker(max_pixels) if check_images else None
    report = ValidationReport()
    results: dict[str, Validated] = {}
    refs: dict[str, Refs] = {}
    for spec in (ITEMS, USERS, IMPRESSIONS):
        if spec.name not in files:
            continue
        raw = read_raw(files[spec.name])
        result = validate_table(
            raw, spec, root=root, refs=refs, checker=checker, embedding_dim=embedding_dim,
            caps=caps,
        )  # fmt: skip
        results[spec.name] = result
        report.tables[spec.name] = result.report
        if spec.name in ("items", "users"):
            kept = set(result.frame[spec.columns[0].name].tolist())
            refs[spec.name] = Refs(files[spec.name], kept, result.rejected_ids - kept)
    for name, result in results.items():
        if rejects_root is not None:
            result.report.rejects_file = write_rejects(
                result.rejects, rejects_root, name, result.report.rows_rejected
            )
    for line in report.summary().splitlines():
        logger.info("%s", line)
    users = results.get("users")
    return PlatformData(
        root=root,
        items=results["items"].frame if "items" in results else None,
        users=users.frame if users else None,
        impressions=results["impressions"].frame if "impressions" in results else None,
        report=report,
        embedding_dim=int(users.embedding_dim or 0) if users else 0,
        rejects={name: r.rejects for name, r in results.items()},
    )
