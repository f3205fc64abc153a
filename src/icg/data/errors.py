"""Errors raised by the data layer."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A fatal problem with a dataset: the data cannot be used at all.

    The message names the file, the row and the field where they apply; they are also kept as
    attributes for programs.

    Args:
        message: what went wrong and what was expected.
        file: the table file concerned, if any.
        row: the 0-based row in that file, if one row is to blame.
        field: the column concerned, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file = file
        self.row = row
        self.field = field


class ImageLoadError(ValueError):
    """An image file that cannot be used: missing, corrupt, too large or of a disallowed format.

    Args:
        path: the image file.
        reason: a stable reason code (see `icg.data.schemas.Reason`).
        detail: a human-readable explanation.
    """

    def __init__(self, path: Path | str, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
