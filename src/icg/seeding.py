"""One seeding call for every trainer: the same seed and inputs give the same weights.

Seeding the generators is not enough on CPU: with more than one thread, PyTorch's backward of an
indexing op (a gather whose indices repeat, as a batch of click rows that share covers) adds
into the same rows in whatever order the threads finish, so two runs of one command wrote
different weights (the preference model's differed from the first step). On the full demo the
difference reached the covers only slightly (true CTR 0.3402 against 0.3403), but a result one
cannot rerun bit for bit cannot be checked. `torch.use_deterministic_algorithms` selects the
ordered kernels instead.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch and make torch use deterministic kernels (process-wide, as
    `transformers.enable_full_determinism`). Ops without a deterministic kernel warn instead of
    raising; on CUDA, cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG``, set here unless the caller did."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
