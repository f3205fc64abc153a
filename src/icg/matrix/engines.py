"""Where the matrix's jobs run: in this process, one process per job, or as Ray tasks.

Every engine runs the same `icg.matrix.jobs.run_job` on a phase's jobs (independent of one
another), skips the jobs already done, and runs every job of the phase even when one fails; the
failures are raised together afterwards (a finished job keeps its result for the next run).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from icg.batch.engines import init_ray
from icg.io import atomic_write_json
from icg.matrix.jobs import job_done, run_job
from icg.matrix.plan import Job

logger = logging.getLogger(__name__)


class MatrixJobError(RuntimeError):
    """Jobs of a phase that failed; each entry names the job's folder and where to look."""

    def __init__(self, failures: Sequence[str]) -> None:
        super().__init__(f"{len(failures)} job(s) failed:\n  " + "\n  ".join(failures))
        self.failures = list(failures)


def _name(job: Job) -> str:
    return f"{job.kind}-{job.dir.name}"


def run_local(jobs: Sequence[Job], workers: int, root: Path) -> list[str]:
    """One job after another in this process; returns the failures."""
    failures = []
    for job in jobs:
        try:
            run_job(job)
        except Exception as err:  # one failed cell must not lose the others' results
            logger.exception("%s failed", _name(job))
            failures.append(f"{job.dir}: {type(err).__name__}: {err}")
    return failures


def _threads(workers: int) -> str:
    """Torch threads per job: the machine's cores shared by the concurrent jobs."""
    return str(max(1, (os.cpu_count() or 1) // max(1, workers)))


def run_processes(jobs: Sequence[Job], workers: int, root: Path) -> list[str]:
    """Each job in its own ``python -m icg.matrix.jobs`` process, ``workers`` at a time; its
    output goes to ``root/logs/<kind>-<hash>.log``."""
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", _threads(workers))

    def one(job: Job) -> str | None:
        spec = atomic_write_json(root / "jobs" / f"{_name(job)}.json", job.to_json())
        log = root / "logs" / f"{_name(job)}.log"
        with log.open("w") as stream:
            rc = subprocess.run(
                [sys.executable, "-m", "icg.matrix.jobs", str(spec)],
                stdout=stream, stderr=subprocess.STDOUT, env=env, check=False,
            ).returncode  # fmt: skip
        return None if rc == 0 else f"{job.dir}: exit code {rc}, see {log}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return [f for f in pool.map(one, jobs) if f is not None]


def run_ray(jobs: Sequence[Job], workers: int, root: Path, address: str | None = None) -> list[str]:
    """Each job as a Ray task (1 CPU each) on the cluster at ``address``, or on a local Ray
    started with ``workers`` CPUs. The matrix folder must be on storage every node sees."""
    # ray is an optional extra (icg[ray]): imported here only, so the other engines run without it
    import ray

    started = init_ray(address, None if address else max(1, workers))
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_job)
        refs = {_name(job): (job, task.remote(job.to_json())) for job in jobs}
        failures = []
        for name, (job, ref) in refs.items():
            try:
                ray.get(ref)
            except Exception as err:  # a failed task: report it with the others
                logger.error("%s failed: %s", name, err)
                failures.append(f"{job.dir}: {type(err).__name__}: {err}")
        return failures
    finally:
        if started:
            ray.shutdown()


ENGINES: dict[str, Callable[..., list[str]]] = {
    "local": run_local,
    "process": run_processes,
    "ray": run_ray,
}


def run_phase(
    jobs: Sequence[Job], engine: str, workers: int, root: Path, address: str | None = None
) -> int:
    """Run the jobs of one phase that are not done yet with ``engine``; returns how many ran.

    Raises:
        MatrixJobError: some jobs failed (after every job of the phase was tried).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {sorted(ENGINES)}, got {engine!r}")
    pending = [j for j in jobs if not job_done(j)]
    if pending:
        kwargs = {"address": address} if engine == "ray" else {}
        failures = ENGINES[engine](pending, workers, root, **kwargs)
        if failures:
            raise MatrixJobError(failures)
    return len(pending)
