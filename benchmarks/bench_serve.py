"""Bounded load test of `icg serve` on loopback: served throughput against the raw batched
`ICGPipeline` in the same run, then latency percentiles, 429 share and server memory at 1x, 2x
and 4x capacity, and a soak mode that prints memory over time.

    python benchmarks/bench_serve.py --run RUN/icg --data WORLD [--requests 80] [--soak 300]

It starts `icg serve` on 127.0.0.1 (a free port, a random key) and loads the same pipeline in
this process. Both first see every item once (the item-feature caches are warm on both sides),
then ``--rounds`` rounds alternate a raw round (``--requests`` covers in pipeline calls of
``--max-batch``, fresh seeds, the server's steps and CFG) with a served round (as many requests
in a closed loop of ``--clients`` clients, default ``--max-batch``), and each round's ratio, the
rows the server's calls held (from ``/metrics``) and the mean ratio are printed: alternating
rounds share the machine's load, which matters on a busy machine. Set ``OMP_NUM_THREADS=1`` on a
machine shared with other work: two intra-op threads that wait for each other collapse under
contention on both sides. Then open-loop load at multiples of the served
capacity. Every phase has a fixed request count and a time limit, and the server is stopped
with SIGTERM at the end. Not a test; prints markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import torch

from icg.serve.backend import PipelineBackend
from icg.serve.config import ServeConfig
from icg.serve.server import free_port

print = functools.partial(print, flush=True)  # progress shows while it runs


@dataclass
class Phase:
    """What one load phase measured."""

    name: str
    offered_rps: float
    wall_s: float = 0.0
    latencies: dict[int, list[float]] = field(default_factory=dict)  # status → seconds
    rss_mb: float = 0.0

    def count(self, status: int) -> int:
        return len(self.latencies.get(status, []))

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def row(self) -> str:
        ok = np.array(self.latencies.get(200, [float("nan")]))
        p50, p95, p99 = (np.percentile(ok, q) for q in (50, 95, 99))
        rejected = self.latencies.get(429, [])
        p99_429 = f"{np.percentile(rejected, 99) * 1000:.0f} ms" if rejected else "-"
        others = self.total - self.count(200) - self.count(429)
        return (
            f"| {self.name} | {self.offered_rps:.2f} | {self.count(200) / self.wall_s:.2f} | "
            f"{p50:.2f} | {p95:.2f} | {p99:.2f} | {self.count(429) / max(self.total, 1):.0%} | "
            f"{p99_429} | {others} | {self.rss_mb:.0f} |"
        )


HEADER = (
    "| load | offered req/s | 200s/s | p50 s | p95 s | p99 s | 429 share | 429 p99 | "
    "other errors | server RSS MB |\n|---|---|---|---|---|---|---|---|---|---|"
)


class Load:
    """Requests against a running server: random known (user, item) pairs, fresh seeds."""

    def __init__(self, url: str, key: str, data: Path, timeout_s: float) -> None:
        self.client = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
        )
        self.users = pd.read_parquet(data / "users.parquet", columns=["user_id"])["user_id"]
        self.items = pd.read_parquet(data / "items.parquet", columns=["item_id"])["item_id"]
        self.rng = np.random.default_rng(0)
        self.seed = 0

    async def one(self, phase: Phase, item_id: str | None = None) -> None:
        self.seed += 1
        body = {
            "user_id": str(self.rng.choice(self.users)),
            "item_id": item_id or str(self.rng.choice(self.items)),
            "seed": self.seed,  # fresh: measure generation, not the result cache
        }
        start = time.perf_counter()
        try:
            status = (await self.client.post("/v1/covers", json=body)).status_code
        except httpx.TransportError:
            status = 0
        phase.latencies.setdefault(status, []).append(time.perf_counter() - start)

    async def closed(self, phase: Phase, n: int, concurrency: int, limit_s: float) -> None:
        """``n`` requests by ``concurrency`` workers back to back (capacity)."""
        left = iter(range(n))

        async def worker() -> None:
            for _ in left:
                await self.one(phase)

        start = time.perf_counter()
        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, pending = await asyncio.wait(workers, timeout=limit_s)
        for task in pending:  # the time limit ends the phase; unfinished requests are dropped
            task.cancel()
        phase.wall_s = time.perf_counter() - start

    async def open(self, phase: Phase, n: int, limit_s: float) -> None:
        """Up to ``n`` requests at ``phase.offered_rps`` (Poisson arrivals), whatever the answers,
        all within ``limit_s``."""
        start = time.perf_counter()
        tasks, at = [], 0.0
        for _ in range(n):
            at += self.rng.exponential(1 / phase.offered_rps)
            if at > limit_s:  # the time limit also ends the arrivals
                break
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            tasks.append(asyncio.create_task(self.one(phase)))
        remaining = max(1.0, limit_s - (time.perf_counter() - start))
        done, pending = await asyncio.wait(tasks, timeout=remaining)
        for task in pending:
            task.cancel()
        phase.wall_s = time.perf_counter() - start


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def start_server(args, key: str, port: int) -> tuple[subprocess.Popen, float]:
    """`icg serve` in a subprocess; returns it and the seconds until ``/readyz`` said ready."""
    cmd = [
        sys.executable, "-m", "icg", "serve", "--run", str(args.run), "--data", str(args.data),
        "--port", str(port), "--max-batch", str(args.max_batch), "--queue-size",
        str(args.queue_size), "--deadline", str(args.deadline), "--max-candidates", "1",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "ICG_API_KEY": key})
    while time.perf_counter() - start < args.ready_timeout:
        if proc.poll() is not None:
            raise SystemExit(f"icg serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"not ready within {args.ready_timeout} s")


class Raw:
    """The same pipeline in this process, called directly in batches (no HTTP, no batcher, no
    PNG): what the server's throughput is measured against."""

    def __init__(self, args) -> None:
        self.backend = PipelineBackend(args.run, args.data)
        self.backend.load()
        config = ServeConfig()
        self.steps, self.cfg = config.default_steps, config.guidance_scale
        self.users = list(self.backend.catalog.users)
        self.items = list(self.backend.catalog.items)
        self.rng = np.random.default_rng(1)
        self.seed = 10**6

    @torch.no_grad()
    def call(self, item_ids: list[str]) -> None:
        """One pipeline call for these items, each with a random user and a fresh seed."""
        catalog, pipe = self.backend.catalog, self.backend.pipe
        users = [str(self.rng.choice(self.users)) for _ in item_ids]
        emb = torch.from_numpy(np.stack([catalog.users[u] for u in users]))  # (B, E)
        self.seed += len(item_ids)
        generators = [torch.Generator().manual_seed(self.seed + k) for k in range(len(item_ids))]
        pipe(
            [catalog.items[i].title for i in item_ids],
            [catalog.items[i].image for i in item_ids],
            user_embeddings=emb,
            item_keys=item_ids,
            num_inference_steps=self.steps,
            guidance_scale=self.cfg,
            generator=generators,
            output_type="pil",
        )

    def warm(self, batch: int) -> None:
        """Every item's features once (the MLLM runs once per item, as in the server)."""
        for start in range(0, len(self.items), batch):
            self.call(self.items[start : start + batch])

    def round(self, n: int, batch: int) -> float:
        """Covers per second over ``n`` covers in calls of ``batch``."""
        start = time.perf_counter()
        for done in range(0, n, batch):
            self.call([str(i) for i in self.rng.choice(self.items, min(batch, n - done))])
        return n / (time.perf_counter() - start)


async def batch_rows(load: Load) -> tuple[float, float]:
    """(rows, calls) the server's pipeline calls have held so far (from /metrics)."""
    text = (await load.client.get("/metrics")).text
    values = {
        line.split()[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(("icg_batch_rows_sum", "icg_batch_rows_count"))
    }
    return values.get("icg_batch_rows_sum", 0.0), values.get("icg_batch_rows_count", 0.0)


async def compare(args, load: Load, raw: Raw) -> float:
    """Alternating raw and served rounds; prints each and the ratio; returns the served rate."""
    items, warm = iter(raw.items), Phase("warm-up", 0.0)

    async def warm_worker() -> None:  # every item once: the server's feature cache is warm too
        for item in items:
            await load.one(warm, item_id=item)

    await asyncio.gather(*(warm_worker() for _ in range(args.clients)))
    raw.warm(args.max_batch)
    print(
        "| round | raw ICGPipeline covers/s | served 200s/s | served / raw | served rows/call |"
        "\n|---|---|---|---|---|"
    )
    raw_rates, served_rates = [], []
    for k in range(args.rounds):
        raw_rates.append(raw.round(args.requests, args.max_batch))
        phase, (rows0, calls0) = Phase("served", 0.0), await batch_rows(load)
        await load.closed(phase, args.requests, args.clients, args.limit)
        rows1, calls1 = await batch_rows(load)
        served_rates.append(phase.count(200) / phase.wall_s)
        print(f"| {k + 1} | {raw_rates[-1]:.2f} | {served_rates[-1]:.2f} | "
              f"{served_rates[-1] / raw_rates[-1]:.2f}x | "
              f"{(rows1 - rows0) / max(calls1 - calls0, 1):.2f} |")  # fmt: skip
    served, raw_rate = float(np.mean(served_rates)), float(np.mean(raw_rates))
    print(f"| mean | {raw_rate:.2f} | {served:.2f} | {served / raw_rate:.2f}x | |\n")
    return served


async def bench(args, url: str, key: str, pid: int) -> None:
    load = Load(url, key, Path(args.data), timeout_s=args.deadline + 10)
    rate = 0.0
    if args.rounds:
        rate = await compare(args, load, Raw(args))
    capacity = Phase(f"capacity (closed loop, {args.clients} clients)", 0.0)
    await load.closed(capacity, args.requests // 2, args.clients, args.limit)
    rate = rate or capacity.count(200) / capacity.wall_s
    if rate == 0:
        raise SystemExit(f"no cover within {args.limit} s at capacity; raise --limit")
    capacity.offered_rps, capacity.rss_mb = capacity.count(200) / capacity.wall_s, rss_mb(pid)
    phases = [capacity]
    if not args.levels:
        print(HEADER)
        print(capacity.row())
    for multiple in args.levels:
        phase = Phase(f"{multiple}x capacity", multiple * rate)
        await load.open(phase, args.requests, args.limit)
        phase.rss_mb = rss_mb(pid)
        phases.append(phase)
    if args.levels:
        print(HEADER)
        for phase in phases:
            print(phase.row())
    if args.soak:
        await soak(load, rate, args.soak, pid)
    await load.client.aclose()


async def soak(load: Load, rate: float, seconds: float, pid: int) -> None:
    """Load at capacity for ``seconds``; print memory every tenth of the time."""
    print(f"\nsoak: {seconds:.0f} s at {rate:.2f} req/s (1x capacity)\n")
    print("| t s | server RSS MB | 200s | 429s | other |\n|---|---|---|---|---|")
    phase, step, rss = Phase("soak", rate), seconds / 10, []
    for k in range(10):
        await load.open(phase, max(1, int(rate * step)), step + 5)
        rss.append(rss_mb(pid))
        other = phase.total - phase.count(200) - phase.count(429)
        print(f"| {(k + 1) * step:.0f} | {rss[-1]:.0f} | {phase.count(200)} | {phase.count(429)} | {other} |")  # fmt: skip
    print(f"\nRSS drift over the soak (last - first sample): {rss[-1] - rss[0]:+.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="stage-B run folder (RUN/icg)")
    parser.add_argument("--data", type=Path, required=True, help="platform data folder")
    parser.add_argument("--requests", type=int, default=80, help="requests per load level")
    parser.add_argument("--levels", type=float, nargs="*", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2, help="raw/served rounds (0: none)")
    parser.add_argument(
        "--clients", type=int, default=0, help="closed-loop clients (0: --max-batch)"
    )
    parser.add_argument("--limit", type=float, default=120, help="seconds per level at most")
    parser.add_argument("--soak", type=float, default=0, help="soak seconds (0: none)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--deadline", type=float, default=30)
    parser.add_argument("--ready-timeout", type=float, default=120)
    args = parser.parse_args()
    args.clients = args.clients or args.max_batch
    key, port = secrets.token_urlsafe(16), free_port()
    proc, ready_s = start_server(args, key, port)
    print(f"server ready in {ready_s:.1f} s (pid {proc.pid}, 127.0.0.1:{port})\n")
    try:
        asyncio.run(bench(args, f"http://127.0.0.1:{port}", key, proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
