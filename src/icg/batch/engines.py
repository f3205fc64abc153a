"""Run partitions through `CoverWorker`: in this process, or on Ray Data with an actor pool.

Both engines call the same ``CoverWorker.run_partition``; the Ray engine only decides where.
Ray is imported by the Ray engine alone, so the local engine runs where Ray is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from icg.batch.worker import CoverWorker

logger = logging.getLogger(__name__)

MAX_BLOCKS = 4096

# called after each partition with (units, images drawn, seconds)
OnDone = Callable[[int, int, float], None]


def run_local(out: Path, settings: dict, partitions: list[int], on_done: OnDone, pipe=None) -> int:
    """Run ``partitions`` one after another with one worker in this process; images drawn."""
    if not partitions:
        return 0
    threads = torch.get_num_threads()  # the worker may set its own: this process keeps its own
    try:
        worker = CoverWorker(out, settings, pipe=pipe)
        for partition in partitions:
            on_done(*worker.run_partition(partition))
        return worker.images_drawn
    finally:
        torch.set_num_threads(threads)


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at ``address``, or start a local instance (loopback, no dashboard).
    Returns whether this call started Ray (and so should shut it down); an instance already
    running in this process is used as it is."""
    # optional dependency: ray (pip install icg[ray])
    import ray

    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
    return True


def run_ray(
    out: Path,
    settings: dict,
    partitions: list[int],
    on_done: OnDone,
    *,
    workers: int,
    address: str | None = None,
    num_cpus: int | None = None,
) -> int:
    """Run ``partitions`` on Ray Data: ``map_batches`` over one row per partition with a pool of
    ``workers`` `CoverWorker` actors (one `ICGPipeline` each); images drawn.

    ``out`` must be reachable by every worker (a shared file system on a cluster).
    """
    if not partitions:
        return 0
    # optional dependency: ray (pip install icg[ray])
    import ray
    import ray.data

    started = init_ray(address, num_cpus)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        per_worker = settings.get("threads") or max(1, cpus // workers)
        if per_worker * workers > cpus:
            raise ValueError(
                f"workers: {workers} actors of {per_worker} CPU(s) need {per_worker * workers} "
                f"CPUs; the Ray cluster has {cpus}"
            )
        settings = {**settings, "threads": per_worker}
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # progress is ours (rich)
        # one partition per block up to MAX_BLOCKS; an actor then runs a block's partitions
        # one by one (batch_size=1), each reported when it is done
        ds = ray.data.from_items(
            [{"partition": p} for p in partitions],
            override_num_blocks=min(len(partitions), MAX_BLOCKS),
        )
        ds = ds.map_batches(
            CoverWorker,
            fn_constructor_kwargs={"out": str(Path(out).resolve()), "settings": settings},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=per_worker,
        )
        images = 0
        for row in ds.iter_rows():
            on_done(int(row["units"]), int(row["images"]), float(row["seconds"]))
            images += int(row["images"])
        return images
    finally:
        if started:
            ray.shutdown()
