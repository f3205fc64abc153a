"""Two disjoint halves of a click log, for the held-out preference model of the tripwire.

Each event goes to half ``0`` or ``1`` by a stable hash of its event id (or, for implicit
feedback, which has none, of its user, item and timestamp): BLAKE2b, not Python's salted
``hash``, so the split is the same in every process, run and platform, and an event keeps its
half when other events are added to the log. The two halves are disjoint and cover the log.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch

from icg.training.click_log import PreferenceData

__all__ = ["event_keys", "keep_log_half", "log_halves"]

_SALT = b"icg-log-half"


def event_keys(data: PreferenceData) -> list[str]:
    """One key per event of ``data.log``: its event id, else ``user|item|timestamp``."""
    log = data.log
    if log.event_id is not None:
        return [str(e) for e in log.event_id]
    users = [data.user_ids[u] if u >= 0 else "" for u in log.user.tolist()]
    items = [data.item_ids[i] for i in log.item.tolist()]
    return [f"{u}|{i}|{t}" for u, i, t in zip(users, items, log.timestamp.tolist(), strict=True)]


def log_halves(keys: list[str]) -> np.ndarray:
    """The half (0 or 1) of each key: ``(N,)`` int64, from the key alone."""
    return np.fromiter(
        (
            hashlib.blake2b(k.encode("utf-8"), digest_size=8, key=_SALT).digest()[-1] & 1
            for k in keys
        ),
        dtype=np.int64,
        count=len(keys),
    )


def keep_log_half(data: PreferenceData, half: int | None) -> PreferenceData:
    """``data`` with only the events of log half ``half`` (``None``: all of them)."""
    if half is None:
        return data
    if half not in (0, 1):
        raise ValueError(f"log_half: expected 0, 1 or None, got {half!r}")
    idx = torch.from_numpy(np.flatnonzero(log_halves(event_keys(data)) == half))
    return dataclasses.replace(data, log=data.log.subset(idx))
