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
from icg.data.report import ValidationReport
from icg.data.schemas import IMPRESSIONS, ITEMS, REJECTS_SCHEMA, USERS, TableSpec
from icg.data.validate import TRUTH_DIR, Refs, Validated, embedding_matrix, validate_table
from icg.data.writers import write_parquet

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
) -> PlatformData:
    """Load and validate a data folder holding ``items.*``, ``users.*`` and ``impressions.*``.

    Each table is read from parquet, CSV or JSONL (parquet preferred when several exist). Bad
    rows are rejected with their reasons and written to ``<rejects_dir>/<table>.parquet``
    (default ``<path>/rejects``); good rows are kept. Impressions must reference kept users and
    items. Nothing under ``<path>/truth/`` is ever read.

    Args:
        path: the data folder.
        rejects_dir: where to write rejects; default ``<path>/rejects``.
        check_images: open the header of every distinct image (items.image, impressions.cover)
            and verify it (format allow-list, pixel limit, PNG CRCs). Paths are checked anyway.
        require: tables that must exist.
        embedding_dim: the expected user embedding length; default the majority length.
        max_pixels: the largest image (width × height) accepted.

    Raises:
        DataError: a required table or column is missing, a table file is unreadable, a table
            has no valid row, or embedding lengths disagree with no majority.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a data folder (expected a directory)", file=root)
    require = tuple(require)
    unknown = sorted(set(require) - set(TABLES))
    if unknown:
        raise ValueError(f"require: unknown table(s) {unknown}, expected a subset of {TABLES}")
    checker = ImageChecker(max_pixels) if check_images else None
    report = ValidationReport()
    results: dict[str, Validated] = {}
    refs: dict[str, Refs] = {}
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
        result = _load_table(file, spec, root, refs, checker, embedding_dim)
        results[spec.name] = result
        report.tables[spec.name] = result.report
        if spec.name in ("items", "users"):
            kept = set(result.frame[spec.columns[0].name].tolist())
            refs[spec.name] = Refs(file, kept, result.rejected_ids - kept)
    rejects_root = Path(rejects_dir) if rejects_dir is not None else root / "rejects"
    for name, result in results.items():
        result.report.rejects_file = _write_rejects(result, rejects_root / f"{name}.parquet")
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


def _load_table(
    file: Path,
    spec: TableSpec,
    root: Path,
    refs: dict[str, Refs],
    checker: ImageChecker | None,
    embedding_dim: int | None,
) -> Validated:
    raw = read_raw(file)
    return validate_table(
        raw, spec, root=root, refs=refs, checker=checker, embedding_dim=embedding_dim
    )


def _write_rejects(result: Validated, path: Path) -> Path | None:
    """Write a table's rejects (an empty file when there are none, replacing stale ones)."""
    try:
        return write_parquet(result.rejects, path, schema=REJECTS_SCHEMA)
    except OSError as err:
        logger.warning(
            "could not write rejects to %s (%s); %d rejected rows are in PlatformData.rejects",
            path,
            err,
            result.report.rows_rejected,
        )
        return None
