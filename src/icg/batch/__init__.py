"""Batch cover generation for many users: per (segment, item), on Ray Data or in one process.

```python
from icg.batch import BatchConfig, run_batch
result = run_batch(BatchConfig(run="RUN", data="W", out="OUT", segments=16))
```

Users are segmented (k-means on their embeddings, the platform's ``segment`` column, or one
segment per user); covers are drawn once per (segment, item) unit by workers that each hold one
`ICGPipeline`; each user then gets the cover their preference model rates best among the item's
segment covers, or their segment's cover. See `icg.batch.run` for the output layout.
"""

from icg.batch.config import BatchConfig
from icg.batch.run import BatchResult, run_batch

__all__ = ["BatchConfig", "BatchResult", "run_batch"]
