"""`PipelineBackend` over a tiny real ICGPipeline: marked PNGs, determinism across batching,
best-of-K by the reward, the MLLM once per item; config, auth and cache units; the CLI."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
import torch
from model_fixtures import perturb_, tiny_icg
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from icg.data import load_dataset
from icg.data.testing import write_tiny_dataset
from icg.pipeline import ICGPipeline
from icg.serve import PipelineBackend, ServeConfig, create_app
from icg.serve.auth import bearer_token, is_loopback, key_matches, load_api_key
from icg.serve.cache import LRUCache
from icg.serve.catalog import Catalog
from icg.serve.png import png_is_marked


class Brightness(torch.nn.Module):
    """A stand-in reward: mean pixel value (the reward contract, no models)."""

    def forward(self, images, titles, users, **context):
        return images.mean(dim=(1, 2, 3)), {}


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    root = write_tiny_dataset(tmp_path_factory.mktemp("serve") / "data", dim=4)
    data = load_dataset(root, rejects_dir=root.parent / "rejects")
    base, model = tiny_icg(user_dim=4)
    perturb_(model)  # a "trained" adapter, so users change the output
    backend = PipelineBackend()
    backend.attach(ICGPipeline(base, model), Catalog.from_dataset(data), Brightness())
    return backend


def post_all(backend, bodies: list[dict], **overrides) -> list[httpx.Response]:
    """POST every body at once to a fresh app over ``backend`` (results cache off)."""

    async def main() -> list[httpx.Response]:
        config = ServeConfig(result_cache_size=0, batch_wait_ms=100, **overrides)
        app = create_app(config, backend)
        async with app.router.lifespan_context(app):
            while not app.state.service.ready:
                await asyncio.sleep(0.005)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                headers = {"Accept": "application/json"}
                return await asyncio.gather(
                    *(client.post("/v1/covers", json=b, headers=headers) for b in bodies)
                )

    return asyncio.run(main())


def png(response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["image"])


def test_real_covers_are_marked_and_the_same_seed_gives_the_same_bytes_batched_or_not(backend):
    body = {"user_id": "u1", "item_id": "i0", "seed": 4, "steps": 2}
    (alone,) = post_all(backend, [body])
    batched = post_all(backend, [{**body, "user_id": "u0"}, body, {"item_id": "i2", "seed": 1}])
    assert png_is_marked(png(alone))
    assert png(batched[1]) == png(alone)
    assert png(batched[0]) != png(alone)  # another user, another cover
    assert batched[2].json()["cold_start"] is True


def test_best_of_k_keeps_the_draw_the_reward_rates_best(backend):
    (r,) = post_all(backend, [{"user_id": "u2", "item_id": "i1", "seed": 0, "candidates": 3}])
    data = r.json()
    assert len(data["scores"]) == 3
    assert data["candidate"] == max(range(3), key=lambda k: data["scores"][k])
    assert data["settings"]["candidates"] == 3


def test_item_features_are_computed_once_per_item(backend):
    before = backend.pipe.items_encoded
    bodies = [{"user_id": f"u{k % 3}", "item_id": "i2", "seed": k, "steps": 1} for k in range(4)]
    assert all(r.status_code == 200 for r in post_all(backend, bodies))
    post_all(backend, [{**bodies[0], "seed": 99}])
    assert backend.pipe.items_encoded - before <= 1
    hits, misses = backend.cache_counts()["features"]
    assert hits > 0


def test_lru_cache_is_bounded_counts_and_keeps_what_was_just_checked():
    cache = LRUCache(2)
    cache["a"], cache["b"] = 1, 2
    assert "a" in cache  # refreshes a
    cache["c"] = 3  # evicts b, the least recently used
    assert set(cache) == {"a", "c"} and len(cache) == 2
    assert cache.get("b") is None
    assert (cache.hits, cache.misses) == (1, 1)
    empty = LRUCache(0)
    empty["x"] = 1
    assert len(empty) == 0


def test_config_refuses_a_public_host_without_a_key_and_caps_are_consistent():
    with pytest.raises(ValidationError, match="beyond loopback"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", api_key=SecretStr("k")).host == "0.0.0.0"
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com")
    with pytest.raises(ValidationError, match="max_candidates"):
        ServeConfig(max_batch=2, max_candidates=4)
    with pytest.raises(ValidationError, match="port"):
        ServeConfig(port=70000)


def test_api_key_from_env_then_file(tmp_path, monkeypatch):
    monkeypatch.delenv("ICG_API_KEY", raising=False)
    assert load_api_key(None) is None
    file = tmp_path / "key"
    file.write_text("from-file\n")
    assert load_api_key(file).get_secret_value() == "from-file"
    monkeypatch.setenv("ICG_API_KEY", "from-env")
    assert load_api_key(file).get_secret_value() == "from-env"
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None
    assert key_matches(SecretStr("abc"), "abc") and not key_matches(SecretStr("abc"), None)


def test_cli_serve_dry_run_and_the_loopback_rule(tmp_path, monkeypatch):
    from icg.cli import build_app

    monkeypatch.delenv("ICG_API_KEY", raising=False)
    runner = CliRunner()
    args = ["serve", "--run", str(tmp_path), "--data", str(tmp_path), "--dry-run"]
    ok = runner.invoke(build_app(), [*args, "--max-batch", "4"])
    assert ok.exit_code == 0, ok.output
    assert '"max_batch": 4' in ok.output and '"host": "127.0.0.1"' in ok.output
    public = runner.invoke(build_app(), [*args, "--host", "0.0.0.0"])
    assert public.exit_code != 0 and "loopback" in public.output
    public_ray = runner.invoke(build_app(), [*args, "--ray", "--host", "0.0.0.0"])
    assert public_ray.exit_code != 0 and "loopback" in public_ray.output
    assert runner.invoke(build_app(), [*args, "--ray", "--replicas", "2"]).exit_code == 0
    lone = runner.invoke(build_app(), [*args, "--replicas", "2"])
    assert lone.exit_code != 0 and "--ray" in lone.output
    monkeypatch.setenv("ICG_API_KEY", "k")
    keyed = runner.invoke(build_app(), [*args, "--host", "0.0.0.0"])
    assert keyed.exit_code == 0 and '"api_key": "**********"' in keyed.output
