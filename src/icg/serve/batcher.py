"""An async micro-batcher: concurrent requests with the same settings share one pipeline call.

A partial call waits ``max_wait_s`` for others to join, counted from its first job's arrival
or from the end of the last call, whichever is later (the callers just answered may be about to
send their next requests). It waits longer, up to `HOLD_FRACTION` of a call's measured duration,
right after a full call (its callers are likely to come back together) and while requests the
server has already begun to read (`arriving`) are on their way to the queue. A call holds at
most ``max_batch`` rows; a single client never waits more than ``max_wait_s``. So a closed loop of ``max_batch`` clients
fills its calls instead of settling into two alternating half calls (the calls of 4 rows that
kept `icg serve` at 0.8x the raw pipeline). The waiting line is bounded: past ``queue_size`` a request is refused
at once (`QueueFull`, the app's 429) instead of queueing without end, and so is a request that
would, at the measured call duration, finish only after its own deadline (load shedding: under
overload a client gets a fast 429 it can retry, not a slow 504). Calls run one at a time in
a dedicated worker thread, so the event loop keeps answering (health, 429s) while the UNet runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

HOLD_FRACTION = 0.1
"""Of a call's measured duration, the longest a partial call waits for requests being read."""

J = TypeVar("J")
R = TypeVar("R")


class QueueFull(Exception):
    """The waiting line is full; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The batcher no longer takes requests."""


class DeadlineExceeded(Exception):
    """A request's deadline passed before its result was ready."""


@dataclass
class Arrival:
    """A request from its first byte until it is queued (see `MicroBatcher.arriving`)."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


@dataclass
class _Pending(Generic[J, R]):
    job: J
    future: asyncio.Future[R]
    arrived: float
    key: Hashable = field(default=None)


class MicroBatcher(Generic[J, R]):
    """Groups jobs with equal ``key(job)`` into calls of ``run_batch`` (a blocking function).

    Args:
        run_batch: jobs → one result per job, in order; runs in the worker thread.
        key: jobs with equal keys may share a call (e.g. the sampling settings).
        rows: the rows a job takes in a call (e.g. its candidates).
        max_batch: rows per call.
        max_wait_s: the longest a job waits for others to join its call.
        queue_size: jobs waiting at most; more are refused with `QueueFull`.
        on_batch: called with (jobs, rows) of every call, for metrics.
    """

    def __init__(
        self,
        run_batch: Callable[[list[J]], list[R]],
        *,
        key: Callable[[J], Hashable] = lambda job: None,
        rows: Callable[[J], int] = lambda job: 1,
        max_batch: int = 8,
        max_wait_s: float = 0.01,
        queue_size: int = 32,
        on_batch: Callable[[int, int], Any] | None = None,
    ) -> None:
        self.run_batch, self.key, self.rows = run_batch, key, rows
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, max_wait_s, queue_size
        self.on_batch = on_batch
        self.batch_seconds = 1.0  # running mean of a call's duration, for Retry-After
        self.calls_done = 0  # finished calls: the duration estimate means something after one
        self.in_flight = 0  # jobs in the running call
        self._running: list[_Pending[J, R]] = []  # the running call's jobs
        self._waiting: deque[_Pending[J, R]] = deque()
        self._arrived = asyncio.Event()
        self._incoming = 0  # requests being read or resolved, not yet queued
        self._last_end = -math.inf  # loop time the last call ended
        self._last_full = False  # whether it held max_batch rows
        self._closing = False
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icg-batch")

    @property
    def closing(self) -> bool:
        """Whether `close` has been called (new jobs are refused)."""
        return self._closing

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a call."""
        return len(self._waiting)

    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Count a request as on its way from entry (before its body is read) until `submit`
        queues it, or it fails first; a partial call waits a little for such requests."""
        arrival = Arrival()
        self._incoming += 1
        try:
            yield arrival
        finally:
            self._arrived_one(arrival)

    def _arrived_one(self, arrival: Arrival | None) -> None:
        if arrival is not None and arrival.open:
            arrival.open = False
            self._incoming -= 1
            self._arrived.set()

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def retry_after(self) -> int:
        """Seconds until the line has likely moved by one full call (at least 1)."""
        calls = self.queue_depth / self.max_batch + 1
        return max(1, math.ceil(self.batch_seconds * calls))

    def estimated_wait(self) -> float:
        """Seconds until a job queued now would likely have its result: the running call, the
        calls ahead of it in the line and its own, at the measured call duration."""
        ahead = math.ceil(self.queue_depth / self.max_batch) + (1 if self.in_flight else 0)
        return self.batch_seconds * (ahead + 1)

    async def submit(self, job: J, timeout_s: float, arrival: Arrival | None = None) -> R:
        """Queue ``job`` and wait for its result.

        Raises:
            QueueFull: the line is full, or the measured wait exceeds ``timeout_s``
                (immediately).
            ShuttingDown: the batcher is closing.
            DeadlineExceeded: no result within ``timeout_s``.
        """
        self._arrived_one(arrival)
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        self._prune()
        if len(self._waiting) >= self.queue_size:
            raise QueueFull(self.retry_after())
        if self.calls_done and self.estimated_wait() > timeout_s:
            raise QueueFull(self.retry_after())
        loop = asyncio.get_running_loop()
        pending = _Pending(job, loop.create_future(), loop.time(), self.key(job))
        self._waiting.append(pending)
        self._arrived.set()
        try:
            return await asyncio.wait_for(pending.future, timeout_s)
        except TimeoutError as err:
            raise DeadlineExceeded(f"no cover within the {timeout_s:g} s deadline") from err

    async def close(self, grace_s: float) -> None:
        """Refuse new jobs, let queued and running ones finish for up to ``grace_s``, then fail
        the rest, running ones included, with `ShuttingDown` (their callers answer at once).
        A second call returns as soon as the first one has finished."""
        self._closing = True
        self._arrived.set()
        running = self._running
        if self._worker is not None and not self._worker.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), grace_s)
            except TimeoutError:
                logger.warning(
                    "shutdown: %d running and %d waiting jobs unfinished after %g s",
                    self.in_flight, self.queue_depth, grace_s,
                )  # fmt: skip
                running = self._running  # the call still running (its thread is abandoned)
                self._worker.cancel()
        for pending in [*running, *self._waiting]:
            if not pending.future.done():
                pending.future.set_exception(ShuttingDown("the server shut down"))
        self._waiting.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _prune(self) -> None:
        """Drop jobs whose caller stopped waiting (deadline passed, client gone)."""
        if any(p.future.done() for p in self._waiting):
            self._waiting = deque(p for p in self._waiting if not p.future.done())

    def _compatible_rows(self, key: Hashable) -> int:
        return sum(self.rows(p.job) for p in self._waiting if p.key == key)

    def _take(self, key: Hashable) -> list[_Pending[J, R]]:
        """The oldest jobs with ``key`` that fit in one call, removed from the line."""
        taken, kept, rows = [], deque(), 0
        for p in self._waiting:
            size = self.rows(p.job)
            if p.key == key and rows + size <= self.max_batch:
                taken.append(p)
                rows += size
            else:
                kept.append(p)
        self._waiting = kept
        return taken

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._prune()
            if not self._waiting:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._waiting[0]
            # the window opens when the first job arrived, or when the last call ended (its
            # callers, answered just now, may be about to send their next requests)
            opened = max(first.arrived, self._last_end)
            hold = max(self.max_wait_s, HOLD_FRACTION * self.batch_seconds * bool(self.calls_done))
            # after a full call, its callers' next requests are likely: wait up to the hold
            wait = hold if self._last_full and opened == self._last_end else self.max_wait_s
            while self._compatible_rows(first.key) < self.max_batch and not self._closing:
                remaining = opened + wait - loop.time()
                if remaining <= 0 and self._incoming > 0:  # more are being read: wait for them
                    remaining = opened + hold - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = [p for p in self._take(first.key) if not p.future.done()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Pending[J, R]]) -> None:
        loop = asyncio.get_running_loop()
        jobs = [p.job for p in batch]
        self.in_flight, self._running = len(batch), batch
        if self.on_batch is not None:
            self.on_batch(len(jobs), sum(self.rows(j) for j in jobs))
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, jobs)
        except Exception as err:  # every caller of the call gets the error
            logger.exception("a pipeline call of %d jobs failed", len(jobs))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        finally:
            self.in_flight, self._running = 0, []
            elapsed = time.perf_counter() - start
            first = self.calls_done == 0
            self.batch_seconds = elapsed if first else 0.8 * self.batch_seconds + 0.2 * elapsed
            self.calls_done += 1
            self._last_end = loop.time()
            self._last_full = sum(self.rows(j) for j in jobs) >= self.max_batch
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
