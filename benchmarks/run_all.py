"""Run every benchmark and print one table of measurements and ratios against their baselines.

    python benchmarks/run_all.py            # what `make bench` runs
    python benchmarks/run_all.py --only world pipeline

Each benchmark measures its baseline in the same process (plain diffusers for the pipeline,
64 px for the renderer, Bayes AUC for the preference model), so ratios hold on a noisy machine
better than absolute times. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pipeline  # noqa: E402
import bench_preference  # noqa: E402
import bench_world  # noqa: E402
from _table import print_table  # noqa: E402

BENCHMARKS = {
    "world": lambda: bench_world.measure(),
    "pipeline": lambda: bench_pipeline.measure(bench_pipeline.parser().parse_args([])),
    "preference": lambda: bench_preference.measure(
        bench_preference.parser().parse_args(["--naive"])
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += BENCHMARKS[name]()
    print_table(rows)


if __name__ == "__main__":
    main()
