"""The validating data layer: schemas, readers/writers with rejects, and safe image loading.

```python
from icg.data import load_dataset
data = load_dataset("world/", rejects_dir="rejects/")  # bad rows: data.rejects (+ rejects/)
```
"""

from icg.data.dataset import PlatformData, load_dataset
from icg.data.errors import DataError, ImageLoadError
from icg.data.feedback import read_implicit_feedback
from icg.data.images import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    check_image,
    load_image,
    load_images_tensor,
)
from icg.data.readers import find_table_file, read_raw
from icg.data.report import TableReport, ValidationReport
from icg.data.schemas import (
    FEEDBACK_SCHEMA,
    IMPRESSIONS_SCHEMA,
    ITEMS_SCHEMA,
    REJECTS_SCHEMA,
    SCHEMAS,
    USERS_SCHEMA,
    Reason,
)
from icg.data.writers import write_parquet, write_table

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "FEEDBACK_SCHEMA",
    "IMPRESSIONS_SCHEMA",
    "ITEMS_SCHEMA",
    "REJECTS_SCHEMA",
    "SCHEMAS",
    "USERS_SCHEMA",
    "DataError",
    "ImageLoadError",
    "PlatformData",
    "Reason",
    "TableReport",
    "ValidationReport",
    "check_image",
    "find_table_file",
    "load_dataset",
    "load_image",
    "load_images_tensor",
    "read_implicit_feedback",
    "read_raw",
    "write_parquet",
    "write_table",
]
