"""A spy on file opens, for tests that prove a code path never reads a file (e.g. ``truth/``)."""

from __future__ import annotations

import builtins
import os

import pytest


def spy_on_opens(mp: pytest.MonkeyPatch) -> list[str]:
    """Record every path given to ``open`` and ``os.open`` while ``mp`` is active; returns the
    list it appends to (file descriptors are recorded as ``""``)."""
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        opened.append(os.fspath(file) if not isinstance(file, int) else "")
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_os_open(path, *args, **kwargs)

    mp.setattr(builtins, "open", spy_open)
    mp.setattr(os, "open", spy_os_open)
    return opened
