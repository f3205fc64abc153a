"""Peak memory and time of `icg world generate` against world size (prints a table; not a test).

Each size runs in a fresh process, so its peak resident set is its own (`ru_maxrss`).

    PYTHONPATH=src python benchmarks/bench_world_memory.py            # the default sizes
    PYTHONPATH=src python benchmarks/bench_world_memory.py 5000 2000 1000000
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = [(1000, 500, 1_000_000), (5000, 2000, 200_000), (5000, 2000, 1_000_000)]


def run(items: int, users: int, impressions: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in GiB) of one `icg world generate` in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "icg", "world", "generate", "--out", str(Path(tmp) / "w"),
            "--items", str(items), "--users", str(users), "--impressions", str(impressions),
            "--seed", "0",
        ]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        if status != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime  # the machine's load does not inflate it
    return seconds, cpu, usage.ru_maxrss / 2**20  # Linux: ru_maxrss is in KiB


def main(sizes: list[tuple[int, int, int]]) -> None:
    print(
        f"{'items':>7} {'users':>7} {'impressions':>12} {'wall s':>8} {'CPU s':>8} {'peak GiB':>9}"
    )
    for items, users, impressions in sizes:
        seconds, cpu, peak = run(items, users, impressions)
        print(f"{items:>7} {users:>7} {impressions:>12} {seconds:>8.1f} {cpu:>8.1f} {peak:>9.2f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main([tuple(args[i : i + 3]) for i in range(0, len(args), 3)] if args else SIZES)
