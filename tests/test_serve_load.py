"""`icg serve` under concurrency, with a counting fake backend: batching, 429, deadline,
graceful shutdown (in-process ASGI, and a real uvicorn on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from pydantic import SecretStr

from icg.serve import ServeConfig, create_app, uvicorn_server
from icg.serve.batcher import MicroBatcher, ShuttingDown
from icg.serve.server import free_port
from icg.serve.testing import FakeBackend

AUTH = {"Authorization": "Bearer k"}
# How long a held fake pipeline call blocks unless the test releases it first: a safety bound,
# never a measurement (every test releases it as soon as its checks are done).
HELD = 10.0


def with_app(
    backend: FakeBackend, test: Callable[[httpx.AsyncClient], Awaitable[None]], **overrides
) -> None:
    """Run ``test`` against a started app (lifespan entered, backend loaded) in-process."""

    async def main() -> None:
        app = create_app(ServeConfig(api_key=SecretStr("k"), **overrides), backend)
        async with app.router.lifespan_context(app):
            while not app.state.service.ready:
                await asyncio.sleep(0.005)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await asyncio.wait_for(test(client), timeout=20)

    asyncio.run(main())


def cover(client: httpx.AsyncClient, **body) -> Awaitable[httpx.Response]:
    return client.post("/v1/covers", json={"item_id": "i0", **body}, headers=AUTH)


def test_concurrent_requests_share_one_pipeline_call():
    backend = FakeBackend()

    async def test(client):
        rs = await asyncio.gather(*(cover(client, user_id=f"u{k % 3}", seed=k) for k in range(6)))
        assert all(r.status_code == 200 for r in rs)

    # the call waits until its batch is full (6 rows), not for a timer: batch_wait_ms is only a
    # safety bound here, so a slow machine cannot split the batch
    with_app(backend, test, max_batch=6, batch_wait_ms=10_000)
    assert [len(call) for call in backend.calls] == [6]


def test_batches_hold_at_most_max_batch_rows_and_only_equal_settings():
    backend = FakeBackend()

    async def test(client):
        reqs = [cover(client, seed=k, candidates=2) for k in range(5)]  # 10 rows
        reqs += [cover(client, seed=k, user_guidance=2.0) for k in range(2)]
        rs = await asyncio.gather(*reqs)
        assert all(r.status_code == 200 for r in rs)

    with_app(backend, test, max_batch=4, max_candidates=4, batch_wait_ms=200)
    rows = [sum(job.rows for job in call) for call in backend.calls]
    assert max(rows) <= 4 and sum(rows) == 12
    for call in backend.calls:
        assert len({job.settings for job in call}) == 1


def test_a_full_queue_answers_429_with_retry_after_at_once():
    backend = FakeBackend(delay_s=HELD)

    async def test(client):
        batcher = client._transport.app.state.service.batcher
        # Staged, not fired together: requests that reach the line before the idle worker takes
        # the first one all count as waiting, so a simultaneous third would itself get the 429.
        busy = [asyncio.create_task(cover(client, seed=0))]
        while not backend.calls:  # seed 0 holds the pipeline until released
            await asyncio.sleep(0.005)
        busy += [asyncio.create_task(cover(client, seed=k)) for k in (1, 2)]
        while batcher.queue_depth < 2:  # 1 runs, 2 wait: the line is full
            assert not any(b.done() for b in busy), [b.result().status_code for b in busy]
            await asyncio.sleep(0.005)
        r = await cover(client, seed=99)
        assert r.status_code == 429 and r.json()["error"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
        # answered at once: while the pipeline still held seed 0 and the line was unchanged
        assert backend.completed == 0 and batcher.queue_depth == 2
        assert not any(b.done() for b in busy)
        backend.release.set()
        assert [b.status_code for b in await asyncio.gather(*busy)] == [200, 200, 200]

    with_app(backend, test, max_batch=1, max_candidates=1, queue_size=2, batch_wait_ms=0)


def test_the_deadline_answers_504_and_the_work_is_dropped():
    backend = FakeBackend(delay_s=HELD)

    async def test(client):
        first = asyncio.create_task(cover(client, seed=1))  # occupies the pipeline
        while not backend.calls:
            await asyncio.sleep(0.005)
        r = await cover(client, seed=2)  # waits behind it past its deadline
        assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
        # the deadline ended the wait, not the pipeline: seed 1 still holds it (and has passed
        # its own deadline too; its call cannot be taken back, seed 2's never starts)
        assert backend.completed == 0 and len(backend.calls) == 1
        backend.release.set()
        assert (await first).status_code == 504

    with_app(backend, test, max_batch=1, max_candidates=1, deadline_s=0.3, batch_wait_ms=0)
    assert backend.completed == 1, "a request past its deadline never reaches the pipeline"


def test_shutdown_finishes_queued_work_then_refuses():
    calls: list[list[int]] = []

    def run(jobs: list[int]) -> list[int]:
        calls.append(jobs)
        time.sleep(0.05)
        return [j * 10 for j in jobs]

    async def main() -> None:
        batcher = MicroBatcher(run, max_batch=2, max_wait_s=0.0, queue_size=8)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(k, timeout_s=5)) for k in range(5)]
        await asyncio.sleep(0.01)
        await batcher.close(grace_s=5)
        assert [t.result() for t in tasks] == [0, 10, 20, 30, 40]
        with pytest.raises(ShuttingDown):
            await batcher.submit(9, timeout_s=1)

    asyncio.run(main())


def wait_until(condition: Callable[[], bool], limit_s: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``limit_s`` passes (a safety bound, not a check)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_uvicorn_graceful_shutdown_finishes_in_flight_requests():
    backend = FakeBackend(delay_s=HELD)
    port = free_port()
    config = ServeConfig(
        api_key=SecretStr("k"), port=port, max_batch=1, max_candidates=1, shutdown_grace_s=HELD
    )
    server = uvicorn_server(config, backend, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: _answers(url)), "the server never became ready"
    results: list[httpx.Response] = []
    body = {"item_id": "i0", "seed": 1}
    request = threading.Thread(
        target=lambda: results.append(
            httpx.post(f"{url}/v1/covers", json=body, headers=AUTH, timeout=2 * HELD)
        )
    )
    request.start()
    assert wait_until(lambda: bool(backend.calls))  # the request holds the pipeline
    server.should_exit = True  # what SIGTERM does
    # shutting down: no new connection is answered, and the held request is still running
    assert wait_until(lambda: not _answers(url)), "the server kept answering after shutdown"
    assert not results and backend.completed == 0
    backend.release.set()
    request.join(timeout=2 * HELD)
    thread.join(timeout=2 * HELD)
    assert not thread.is_alive()
    assert results and results[0].status_code == 200
    assert backend.completed == 1
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=1)


def test_a_burst_past_the_measured_capacity_gets_fast_429s_not_504s():
    backend = FakeBackend(delay_s=0.8)

    async def test(client):
        batcher = client._transport.app.state.service.batcher
        assert (await cover(client, seed=0)).status_code == 200  # measures one call (0.8 s)
        backend.delay_s = HELD  # from now on every call holds the pipeline until released
        burst = [asyncio.create_task(cover(client, seed=k)) for k in range(1, 9)]
        # each request is either refused at once or accepted (waiting in the line or running)
        while sum(b.done() for b in burst) + batcher.queue_depth + batcher.in_flight < 8:
            await asyncio.sleep(0.005)
        refused = [b.result().status_code for b in burst if b.done()]
        # the measured wait (0.8 s a call) lets 2 or 3 of 8 meet the 3 s deadline: the rest
        # are refused before any of the accepted ones has been drawn
        assert refused and set(refused) == {429}, refused
        assert backend.completed == 1 and 2 <= 8 - len(refused) <= 3
        backend.release.set()
        codes = [r.status_code for r in await asyncio.gather(*burst)]
        assert sorted(codes) == [200] * (8 - len(refused)) + [429] * len(refused), codes

    with_app(backend, test, max_batch=1, max_candidates=1, deadline_s=3, batch_wait_ms=0)


def test_a_partial_call_waits_for_requests_being_read_and_only_for_them():
    """A closed loop of max_batch clients once split its calls: the answers of one call come
    back milliseconds apart, and the first new request started a call alone. A request the
    server is reading (`arriving`) now holds a partial call until it is queued; one that fails
    before it is queued releases the hold; with nothing arriving, nothing waits."""
    calls: list[list[int]] = []

    def run(jobs: list[int]) -> list[int]:
        calls.append(jobs)
        return jobs

    async def main() -> None:
        batcher = MicroBatcher(run, max_batch=4, max_wait_s=0.0, queue_size=8)
        batcher.start()
        await batcher.submit(0, timeout_s=5)  # one measured call
        batcher.batch_seconds = 100.0  # a hold of 10 s: far longer than any step below
        with batcher.arriving() as reading:
            first = asyncio.create_task(batcher.submit(1, timeout_s=1000))
            await asyncio.sleep(0.05)
            assert calls == [[0]]  # job 1 waits for the request being read
            await batcher.submit(2, timeout_s=1000, arrival=reading)
        assert await first == 1 and calls[-1] == [1, 2]
        with batcher.arriving():  # this one fails before it is queued (e.g. a 422)
            alone = asyncio.create_task(batcher.submit(3, timeout_s=1000))
            await asyncio.sleep(0.05)
            assert calls[-1] == [1, 2]
        assert await asyncio.wait_for(alone, 5) == 3 and calls[-1] == [3]
        assert await batcher.submit(4, timeout_s=1000) == 4 and calls[-1] == [4]  # no hold
        await batcher.close(grace_s=1)

    asyncio.run(main())


def test_after_a_call_the_callers_it_answered_get_the_batch_window_again():
    """Two half calls used to alternate in a closed loop of max_batch clients: a job that had
    waited through a call started alone the moment it ended. Its window now reopens when the
    call ends, so the caller answered by that call joins it."""
    calls: list[list[str]] = []

    def run(jobs: list[str]) -> list[str]:
        calls.append(jobs)
        if jobs == ["a"]:
            time.sleep(1.0)  # longer than the 0.5 s window of the job that waits through it
        return jobs

    async def main() -> None:
        batcher = MicroBatcher(run, max_batch=2, max_wait_s=0.5, queue_size=8)
        batcher.start()
        a = asyncio.create_task(batcher.submit("a", timeout_s=30))
        await asyncio.sleep(0.6)  # "a" has started alone (its window passed)
        b = asyncio.create_task(batcher.submit("b", timeout_s=30))  # waits through "a"'s call
        await a
        assert await batcher.submit("a2", timeout_s=30) == "a2"  # a's caller, straight back
        assert await b == "b" and calls == [["a"], ["b", "a2"]]
        await batcher.close(grace_s=1)

    asyncio.run(main())
