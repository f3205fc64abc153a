"""The table formats (DESIGN.md section 4) as explicit pyarrow schemas plus validation specs.

The pyarrow schemas describe what we *write* (normalised form). The `TableSpec`s describe what
we *accept* on input: which columns are required, how each is parsed, which ones are ids, paths
or references to another table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa


class Reason(StrEnum):
    """Why a row was rejected; the value is written to the rejects file."""

    NULL = "null"
    WRONG_TYPE = "wrong_type"
    MALFORMED_ROW = "malformed_row"
    EMBEDDING_LENGTH = "embedding_length"
    EMBEDDING_NON_FINITE = "embedding_non_finite"
    UNKNOWN_USER = "unknown_user"
    UNKNOWN_ITEM = "unknown_item"
    DUPLICATE_ID = "duplicate_id"
    NEGATIVE_POSITION = "negative_position"
    BAD_PATH = "bad_path"
    FORBIDDEN_PATH = "forbidden_path"
    MISSING_IMAGE = "missing_image"
    CORRUPT_IMAGE = "corrupt_image"
    IMAGE_TOO_LARGE = "image_too_large"
    DISALLOWED_FORMAT = "disallowed_format"
    NOT_A_FILE = "not_a_file"  # a FIFO, device or folder where a file is expected
    CONTROL_CHARACTER = "control_character"  # NUL, other C0 controls or undecodable bytes
    TOO_LONG = "too_long"  # over a cap of `icg.data.safety.Caps`
    EMBEDDING_MAGNITUDE = "embedding_magnitude"  # finite but extreme


class Kind(StrEnum):
    """How a column's values are parsed."""

    STRING = "string"
    PATH = "path"  # a string path relative to the data folder, made absolute on load
    INT = "int"
    BOOL = "bool"
    TIMESTAMP = "timestamp"  # int64 or timestamp on input; int64 Unix seconds after loading
    EMBEDDING = "embedding"  # list<float32> of one fixed length


@dataclass(frozen=True)
class ColumnSpec:
    """One accepted input column.

    Args:
        name: column name.
        kind: how values are parsed.
        required: the column must exist and every row must have a value.
        unique: values must be unique (an id column).
        references: the table whose id this column refers to ("users" or "items").
        non_negative: negative values are rejected (as ``negative_<name>``).
        image: the column is an image path that is checked when images are checked.
    """

    name: str
    kind: Kind
    required: bool = True
    unique: bool = False
    references: str | None = None
    non_negative: bool = False
    image: bool = False


@dataclass(frozen=True)
class TableSpec:
    """An accepted input table: its name (also the file stem) and columns.

    Columns not listed (user features, item extras) are allowed and passed through unchanged.
    """

    name: str
    columns: tuple[ColumnSpec, ...]

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.required]


ITEMS = TableSpec(
    "items",
    (
        ColumnSpec("item_id", Kind.STRING, unique=True),
        ColumnSpec("title", Kind.STRING),
        ColumnSpec("category", Kind.STRING),
        ColumnSpec("image", Kind.PATH, image=True),
        ColumnSpec("description", Kind.STRING, required=False),
    ),
)

USERS = TableSpec(
    "users",
    (
        ColumnSpec("user_id", Kind.STRING, unique=True),
        ColumnSpec("embedding", Kind.EMBEDDING),
    ),
)

IMPRESSIONS = TableSpec(
    "impressions",
    (
        ColumnSpec("event_id", Kind.STRING, unique=True),
        ColumnSpec("user_id", Kind.STRING, references="users"),
        ColumnSpec("item_id", Kind.STRING, references="items"),
        ColumnSpec("cover", Kind.PATH, image=True),
        ColumnSpec("position", Kind.INT, non_negative=True),
        ColumnSpec("clicked", Kind.BOOL),
        ColumnSpec("timestamp", Kind.TIMESTAMP),
    ),
)

FEEDBACK = TableSpec(
    "feedback",
    (
        ColumnSpec("user_id", Kind.STRING, references="users"),
        ColumnSpec("item_id", Kind.STRING, references="items"),
        ColumnSpec("timestamp", Kind.TIMESTAMP),
    ),
)

SPECS: dict[str, TableSpec] = {s.name: s for s in (ITEMS, USERS, IMPRESSIONS, FEEDBACK)}

# What we write. Paths are stored relative to the data folder.
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),
        pa.field("description", pa.string(), nullable=True),
    ]
)
USERS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)
IMPRESSIONS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("cover", pa.string(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        pa.field("clicked", pa.bool_(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("clicked", pa.bool_(), nullable=False),
    ]
)
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("value", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "items": ITEMS_SCHEMA,
    "users": USERS_SCHEMA,
    "impressions": IMPRESSIONS_SCHEMA,
    "feedback": FEEDBACK_SCHEMA,
    "rejects": REJECTS_SCHEMA,
}
