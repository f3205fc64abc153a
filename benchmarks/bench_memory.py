"""Memory regression benchmark: peak RSS while icg refuses each file of the hostile set.

    python benchmarks/bench_memory.py [--bound-mb 200]

Each file is opened in a fresh subprocess (after its imports), the way icg opens it: images
through the safe loader (check, decode, resize) and the served upload path, safetensors through
`icg.artifacts.read_safetensors` with the expected shapes. Before the image policy, the thin
PNG cost gigabytes once a processor resized it and the chunk/tensor files were read whole; now
each must be refused with peak RSS within ``--bound-mb`` of the child's baseline. Prints
markdown and exits 1 when a file is accepted or over the bound.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"

CHILD = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import torch, icg.artifacts, icg.data.images, icg.serve.catalog
from hostile_files import refuse_all
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
path, name = Path(sys.argv[2]), Path(sys.argv[2]).name
base = rss()
message = refuse_all({name: path})[name]
if name.endswith(".png"):
    from icg.serve.errors import APIError
    try:
        with open(path, "rb") as f:  # what a client can send: at most the 8 MiB body cap
            body = f.read(8 * 2**20)
        icg.serve.catalog.load_upload(body, 4_000_000)
        raise SystemExit(name + ": upload accepted")
    except APIError as err:
        message += " | upload: %d %s" % (err.status, err.detail)
print(json.dumps({"name": name, "base": base, "peak": rss(), "message": message}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bound-mb", type=float, default=200.0)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from hostile_files import build

    failed = False
    print("| file | size on disk (apparent) | peak RSS over baseline | refusal |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="icg-bench-memory-") as folder:
        for name, path in build(Path(folder)).items():
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(TESTS), str(path)],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if proc.returncode != 0:
                print(f"| {name} | | | FAILED: {proc.stderr.strip().splitlines()[-1:]} |")
                failed = True
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            extra = (row["peak"] - row["base"]) / 2**20
            failed |= extra > args.bound_mb
            detail = row["message"].split(": ", 1)[-1][:110]
            size = path.stat().st_size
            print(f"| {name} | {size:,} B | {extra:.1f} MB | {detail} |")
    print(
        f"\nbound: {args.bound_mb:g} MB over the child's baseline: {'FAILED' if failed else 'ok'}"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
