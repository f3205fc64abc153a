"""`icg serve --ray`: the same app as a Ray Serve deployment on a local Ray instance: two
replicas of the counting fake backend, Ray's proxy on a free loopback port."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray  # an installed extra under `make test` (icg[ray]): a failing import fails
from pydantic import SecretStr

from icg.serve import ServeConfig
from icg.serve.png import png_is_marked
from icg.serve.ray_app import (
    REPLICA_HEADER,
    cover_application,
    start_ray_serve,
    stop_ray_serve,
)
from icg.serve.server import free_port
from icg.serve.testing import FakeBackend

pytestmark = pytest.mark.slow  # a local Ray instance: tens of seconds to start

KEY = "ray-s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def url():
    """Two replicas on a local Ray instance; drained and shut down after the module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = ServeConfig(api_key=SecretStr(KEY), port=free_port(), max_candidates=2)
        start_ray_serve(config, replicas=2, make_backend=FakeBackend, num_cpus=0.5)
        yield f"http://127.0.0.1:{config.port}"
        stop_ray_serve()
    finally:
        ray.shutdown()


def cover(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/covers", json={"item_id": "i0", **body}, headers=AUTH, timeout=30)


def assert_json_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["detail"]
    assert "Traceback" not in response.text


def test_health_and_ready_answer_without_a_key(url):
    health = httpx.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert ready.headers[REPLICA_HEADER]


def test_a_cover_is_a_marked_png_and_the_same_seed_gives_the_same_bytes(url):
    first, again = cover(url, user_id="u1", seed=7), cover(url, user_id="u1", seed=7)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/png" and png_is_marked(first.content)
    assert first.headers["x-icg-seed"] == "7"
    assert again.content == first.content
    as_json = httpx.post(
        f"{url}/v1/covers",
        json={"item_id": "i1", "seed": 7, "candidates": 2},
        headers={**AUTH, "Accept": "application/json"},
        timeout=30,
    )
    assert as_json.status_code == 200 and as_json.json()["settings"]["candidates"] == 2


def test_a_wrong_or_missing_key_is_401_and_caps_and_lookups_answer_as_the_app_does(url):
    body = {"item_id": "i0", "seed": 1}
    wrong = httpx.post(f"{url}/v1/covers", json=body, headers={"Authorization": "Bearer x"})
    assert_json_error(wrong, 401, "unauthorized")
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert_json_error(httpx.post(f"{url}/v1/covers", json=body), 401, "unauthorized")
    assert_json_error(cover(url, seed=1, candidates=3), 422, "over_limit")
    assert_json_error(cover(url, item_id="nope"), 404, "unknown_item")


def test_both_replicas_answer_covers(url):
    seen: set[str] = set()
    with ThreadPoolExecutor(max_workers=4) as pool:
        for round_ in range(10):  # at most 40 requests
            seeds = range(4 * round_, 4 * round_ + 4)
            rs = list(pool.map(lambda seed: cover(url, seed=seed), seeds))
            assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
            seen |= {r.headers[REPLICA_HEADER] for r in rs}
            if len(seen) == 2:
                break
    assert len(seen) == 2, seen


def test_replicas_below_one_are_refused():
    with pytest.raises(ValueError, match="replicas=0"):
        cover_application(ServeConfig(), replicas=0)
