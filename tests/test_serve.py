"""`icg serve` over a counting fake backend: auth, caps, errors, caches, metrics, JSON."""

from __future__ import annotations

import base64
import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from icg.serve import ServeConfig, create_app
from icg.serve.png import png_is_marked
from icg.serve.testing import FakeBackend

KEY = "s3cret-token"
AUTH = {"Authorization": f"Bearer {KEY}"}


def serve(backend: FakeBackend | None = None, **overrides) -> TestClient:
    """A started app (lifespan run, backend loaded) over ``backend``."""
    config = ServeConfig(api_key=SecretStr(KEY), **overrides)
    client = TestClient(create_app(config, backend or FakeBackend()), raise_server_exceptions=False)
    client.__enter__()
    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            return client
        time.sleep(0.01)
    raise AssertionError("the fake backend never became ready")


@pytest.fixture
def client():
    backend = FakeBackend()
    c = serve(backend)
    c.backend = backend
    yield c
    c.__exit__(None, None, None)


def png_b64(size: tuple[int, int] = (16, 16)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def assert_json_error(response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    if error is not None:
        assert body["error"] == error
    return body


def test_missing_or_wrong_key_is_401_and_health_needs_none(client):
    body = {"user_id": "u0", "item_id": "i0", "seed": 1}
    assert_json_error(client.post("/v1/covers", json=body), 401, "unauthorized")
    wrong = {"Authorization": "Bearer nope"}
    assert_json_error(client.post("/v1/covers", json=body, headers=wrong), 401)
    assert_json_error(client.get("/metrics"), 401)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.post("/v1/covers", json=body, headers=AUTH).status_code == 200
    assert client.backend.calls, "an authorised request reaches the backend"


def test_png_carries_the_marker_and_same_seed_same_bytes(client):
    body = {"user_id": "u1", "item_id": "i2", "seed": 7}
    first = client.post("/v1/covers", json=body, headers=AUTH)
    assert first.headers["content-type"] == "image/png"
    assert png_is_marked(first.content)
    client.app.state.service.results.clear()  # the same bytes from a fresh draw, not the cache
    again = client.post("/v1/covers", json=body, headers=AUTH)
    assert again.headers["x-icg-cache"] == "miss"
    assert again.content == first.content
    other = client.post("/v1/covers", json={**body, "seed": 8}, headers=AUTH)
    assert other.content != first.content


def test_results_are_cached_by_user_item_seed_and_settings(client):
    body = {"user_id": "u1", "item_id": "i0", "seed": 3}
    client.post("/v1/covers", json=body, headers=AUTH)
    hit = client.post("/v1/covers", json=body, headers=AUTH)
    assert hit.headers["x-icg-cache"] == "hit"
    assert len(client.backend.calls) == 1
    client.post("/v1/covers", json={**body, "steps": 3}, headers=AUTH)
    assert len(client.backend.calls) == 2


def test_json_response_has_base64_image_and_manifest(client):
    body = {"user_id": "u0", "item_id": "i1", "seed": 5, "candidates": 3}
    r = client.post("/v1/covers", json=body, headers={**AUTH, "Accept": "application/json"})
    data = r.json()
    assert png_is_marked(base64.b64decode(data["image"]))
    assert data["seed"] == 5 and data["user_id"] == "u0" and data["item_id"] == "i1"
    assert len(data["scores"]) == 3 and data["candidate"] == max(
        range(3), key=lambda k: data["scores"][k]
    )
    assert data["settings"] == {
        "steps": 10, "guidance_scale": 3.0, "user_guidance": 1.0, "candidates": 3,
    }  # fmt: skip
    assert data["cold_start"] is False


def test_caps_answer_413_or_422_with_a_message():
    c = serve(max_body_bytes=4096, max_image_pixels=64 * 64)
    base = {"user_id": "u0", "item_id": "i0"}
    body = assert_json_error(
        c.post("/v1/covers", json={**base, "steps": 51}, headers=AUTH), 422, "over_limit"
    )
    assert "steps=51" in body["detail"] and "50" in body["detail"]
    assert_json_error(c.post("/v1/covers", json={**base, "candidates": 5}, headers=AUTH), 422)
    assert_json_error(c.post("/v1/covers", json={**base, "extra": 1}, headers=AUTH), 422)
    for bad in ({"user_id": "u\x000", "item_id": "i0"}, {"title": "a\x1bcat", "image": png_b64()}):
        assert_json_error(c.post("/v1/covers", json=bad, headers=AUTH), 422)  # control characters
    extreme = {"user_embedding": [1e38, 0.0, 0.0, 0.0], "item_id": "i0"}
    assert (
        "magnitude"
        in assert_json_error(c.post("/v1/covers", json=extreme, headers=AUTH), 422)["detail"]
    )
    big = {"title": "a cat", "image": "A" * 8000}
    assert_json_error(c.post("/v1/covers", json=big, headers=AUTH), 413, "too_large")
    huge = {"title": "a cat", "image": png_b64((65, 64))}
    assert_json_error(c.post("/v1/covers", json=huge, headers=AUTH), 413, "bad_upload")
    assert c.post(
        "/v1/covers", json={"title": "a cat", "image": png_b64()}, headers=AUTH
    ).is_success
    c.__exit__(None, None, None)


def test_cold_start_unknown_user_unknown_item_and_bad_uploads(client):
    cold = client.post("/v1/covers", json={"item_id": "i0", "seed": 1}, headers=AUTH)
    assert cold.headers["x-icg-cold-start"] == "true"
    unknown = {"user_id": "nobody", "item_id": "i0", "seed": 1}
    body = assert_json_error(client.post("/v1/covers", json=unknown, headers=AUTH), 404)
    assert "nobody" in body["detail"]
    fallback = client.post("/v1/covers", json={**unknown, "allow_cold_start": True}, headers=AUTH)
    assert fallback.headers["x-icg-cold-start"] == "true"
    assert fallback.content == cold.content  # the same cold-start draw
    assert_json_error(
        client.post("/v1/covers", json={"item_id": "nothing"}, headers=AUTH), 404, "unknown_item"
    )
    corrupt_png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
    for image in ("not base64!", base64.b64encode(b"GIF89a broken").decode(), "", corrupt_png):
        r = client.post("/v1/covers", json={"title": "t", "image": image}, headers=AUTH)
        detail = assert_json_error(r, 422)["detail"]
        assert "<" not in detail and "_io." not in detail  # no object reprs
    emb = client.post(
        "/v1/covers", json={"user_embedding": [0.1, 0.2], "item_id": "i0"}, headers=AUTH
    )
    assert "expected 4 numbers" in assert_json_error(emb, 422)["detail"]
    ok = client.post(
        "/v1/covers", json={"user_embedding": [0.1, 0.2, 0.3, 0.4], "item_id": "i0"}, headers=AUTH
    )
    assert ok.headers["x-icg-cold-start"] == "false"


def test_malformed_json_and_backend_failure_are_json_without_traceback():
    c = serve(FakeBackend(fail=True))
    r = c.post("/v1/covers", content=b"{not json", headers=AUTH)
    assert_json_error(r, 422, "invalid_request")
    r = c.post("/v1/covers", json={"item_id": "i0"}, headers=AUTH)
    body = assert_json_error(r, 500, "internal")
    assert "/srv/secret" not in r.text
    assert_json_error(c.get("/nowhere"), 404, "not_found")
    assert body["detail"]
    c.__exit__(None, None, None)


def test_readyz_waits_for_the_backend():
    config = ServeConfig(api_key=SecretStr(KEY))
    with TestClient(create_app(config, FakeBackend(load_s=0.3))) as c:
        assert_json_error(c.get("/readyz"), 503, "not_ready")
        r = c.post("/v1/covers", json={"item_id": "i0"}, headers=AUTH)
        assert_json_error(r, 503, "not_ready")
        assert r.headers["retry-after"]
        time.sleep(0.5)
        assert c.get("/readyz").status_code == 200


def test_metrics_report_requests_queue_batches_caches_and_429s(client):
    body = {"user_id": "u0", "item_id": "i0", "seed": 1}
    client.post("/v1/covers", json=body, headers=AUTH)
    client.post("/v1/covers", json=body, headers=AUTH)
    text = client.get("/metrics", headers=AUTH).text
    assert 'icg_requests_total{route="/v1/covers",status="200"} 2.0' in text
    for name in (
        "icg_request_seconds_bucket", "icg_queue_depth", "icg_batch_rows_bucket",
        'icg_cache_hits{cache="results"} 1.0', "icg_rejected_total",
    ):  # fmt: skip
        assert name in text


def test_openapi_documents_the_cover_request(client):
    spec = client.get("/openapi.json", headers=AUTH).json()
    op = spec["paths"]["/v1/covers"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert {"user_id", "item_id", "candidates", "seed"} <= set(schema["properties"])
    assert {"200", "401", "429", "504"} <= set(op["responses"])
    assert client.get("/docs", headers=AUTH).status_code == 200


def test_docs_and_openapi_need_the_key_and_load_nothing_from_elsewhere(client):
    """With a key set, /docs and /openapi.json are 401 without it; the docs page is one
    self-contained HTML document: no script, no http(s) URL, a CSP that fetches nothing."""
    for path in ("/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"):
        response = client.get(path)
        assert response.status_code in (401, 404), (path, response.status_code)
    for path in ("/docs", "/openapi.json"):
        assert_json_error(client.get(path), 401, "unauthorized")
        assert_json_error(client.get(path, headers={"Authorization": "Bearer x"}), 401)
    page = client.get("/docs", headers=AUTH)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (
        page.headers["content-security-policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    )
    text = page.text
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()
    assert "/v1/covers" in text and "item_id" in text and "candidates" in text
    assert "429" in text  # the responses are listed


def test_docs_are_open_without_a_key():
    app = create_app(ServeConfig(), FakeBackend())
    with TestClient(app) as open_client:
        assert open_client.get("/docs").status_code == 200
        assert open_client.get("/openapi.json").json()["info"]["title"] == "icg serve"
