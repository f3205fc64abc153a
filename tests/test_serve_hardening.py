"""Slow and many clients, hostile bodies and shutdown, against a real server on 127.0.0.1 in a
subprocess (FakeBackend): raw sockets for slow headers and bodies, SIGTERM during a burst. Every
wait is bounded by the server's own settings (header and body timeouts, grace period), never a
fixed wall clock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from icg.serve.server import RESPONSE_FLUSH_S, free_port

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVER = """
import json, logging, sys
from pydantic import SecretStr
from icg.serve import ServeConfig, uvicorn_server
from icg.serve.testing import FakeBackend
settings = json.loads(sys.argv[1])
delay = settings.pop("delay_s")
level = settings.pop("log_level", "warning")
logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
config = ServeConfig(api_key=SecretStr("test-key"), **settings)
uvicorn_server(config, FakeBackend(delay_s=delay), log_level=level).run()
"""


@contextmanager
def server(**settings) -> Iterator[tuple[str, dict, subprocess.Popen]]:
    """A server subprocess with ``settings`` (ServeConfig fields plus the backend's delay_s)."""
    settings = {"port": free_port(), "delay_s": 0.0, **settings}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, json.dumps(settings)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    url = f"http://127.0.0.1:{settings['port']}"
    try:
        for _ in range(600):  # up to a minute on a loaded machine
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("server did not start")
        yield url, settings, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def read_response(sock: socket.socket) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a raw HTTP response, read until the server closes."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    return int(lines[0].split()[1]), headers, json.loads(body)


def connect(url: str, timeout: float) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    return sock


@pytest.fixture(scope="module")
def guarded():
    with server(header_timeout_s=1.0, body_timeout_s=1.0, max_connections=16) as running:
        yield running


def test_slow_headers_are_cut_off_with_a_json_408(guarded):
    url, cfg, _ = guarded
    sock = connect(url, timeout=cfg["header_timeout_s"] * 10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
    status, headers, body = read_response(sock)
    assert status == 408 and headers["content-type"] == "application/json"
    assert body["error"] == "request_timeout"


def test_a_trickled_body_is_cut_off_with_a_json_408(guarded):
    url, cfg, _ = guarded
    sock = connect(url, timeout=cfg["body_timeout_s"] * 10)
    head = (
        f"POST /v1/covers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"item_id": ')
    status, _, body = read_response(sock)
    assert status == 408 and body["error"] == "request_timeout"
    assert "body not received within 1 s" in body["detail"]


def test_connections_past_the_cap_get_json_503_and_health_recovers(guarded):
    """Idle sockets past ``max_connections`` are answered 503 JSON at once; the rest are cut
    off by the header timeout, so /healthz answers within it."""
    url, cfg, _ = guarded
    idle = [
        connect(url, timeout=cfg["header_timeout_s"] * 10) for _ in range(cfg["max_connections"])
    ]
    extra = connect(url, timeout=cfg["header_timeout_s"] * 10)
    status, headers, body = read_response(extra)
    assert status == 503 and body["error"] == "too_many_connections" and headers["retry-after"]
    start = time.monotonic()
    bound = cfg["header_timeout_s"] * 3  # the idle ones are closed after header_timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=bound).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() - start < bound, "/healthz did not recover within the timeout"
        time.sleep(0.05)
    for sock in idle:
        sock.close()


def test_a_huge_422_is_capped_and_parsed_off_the_event_loop(guarded):
    """An 8 MB body of ~600k unknown keys: a short 422, and /healthz keeps answering within the
    header timeout while the server reads and parses it."""
    url, cfg, _ = guarded
    body = "{" + ",".join(f'"k{n}":0' for n in range(600_000)) + "}"
    assert len(body) < 8 * 2**20
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            start = time.monotonic()
            httpx.get(f"{url}/healthz", timeout=cfg["header_timeout_s"] * 10)
            latencies.append(time.monotonic() - start)
            time.sleep(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        response = httpx.post(
            f"{url}/v1/covers", content=body, headers={**AUTH, "Content-Type": "application/json"},
            timeout=60,
        )  # fmt: skip
    finally:
        stop.set()
        thread.join()
    assert response.status_code == 422 and len(response.content) < 4096
    assert "over 8192; expected one CoverRequest" in response.json()["detail"]
    assert latencies and max(latencies) < cfg["header_timeout_s"]


def test_many_unknown_fields_list_ten_and_count_the_rest(guarded):
    url, _, _ = guarded
    body = {f"k{n}": 0 for n in range(500)}
    response = httpx.post(f"{url}/v1/covers", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 422 and "and 490 more" in response.json()["detail"]
    assert len(response.content) < 2048


def test_sigterm_during_a_burst_answers_every_request_with_json(tmp_path):
    """One grace period: the running call finishes, everything else gets 503 JSON with
    Retry-After, no plain-text 500, and the process exits within grace + flush."""
    grace = 1.0
    with server(
        delay_s=0.6, max_batch=1, max_candidates=1, queue_size=64, shutdown_grace_s=grace
    ) as (url, _, proc):
        responses: list[httpx.Response | Exception] = []

        def post(n: int) -> None:
            try:
                responses.append(
                    httpx.post(
                        f"{url}/v1/covers", json={"item_id": "i0", "seed": n}, headers=AUTH,
                        timeout=30,
                    )
                )  # fmt: skip
            except httpx.HTTPError as err:
                responses.append(err)

        threads = [threading.Thread(target=post, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for _ in range(600):  # until one call runs and requests wait behind it
            metrics = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
            depth = next(
                float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("icg_queue_depth ")
            )  # fmt: skip
            if depth >= 3:
                break
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=(grace + RESPONSE_FLUSH_S) * 10)
        exited = time.monotonic() - sent
        for t in threads:
            t.join(timeout=30)
    assert len(responses) == 12
    statuses = [r.status_code for r in responses if isinstance(r, httpx.Response)]
    assert len(statuses) >= 4, responses  # the accepted ones (later ones may find it closed)
    assert 200 in statuses and 503 in statuses, statuses
    for r in responses:
        if isinstance(r, httpx.Response):
            assert r.status_code in (200, 503), (r.status_code, r.text)
            if r.status_code == 503:
                assert r.headers["content-type"] == "application/json" and r.headers["retry-after"]
                assert r.json()["error"] == "shutting_down"
    assert exited < grace + RESPONSE_FLUSH_S + 5  # one grace period, not two in a row


def test_upload_cache_keys_keep_image_and_title_apart():
    """(P + "X", "Y") and (P, "XY") once shared a result-cache entry."""
    import base64
    import io

    from PIL import Image

    from icg.serve.catalog import Catalog
    from icg.serve.schemas import CoverRequest

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    png = buf.getvalue()
    catalog = Catalog({}, {}, 0)

    def key(raw: bytes, title: str) -> str:
        request = CoverRequest(title=title, image=base64.b64encode(raw).decode())
        return catalog.item(request, 10_000)[0]

    assert key(png + b"X", "Y") != key(png, "XY")
    assert key(png, "XY") == key(png, "XY")


def test_serve_config_errors_never_print_the_key_and_config_host_port_win(tmp_path):
    from typer.testing import CliRunner

    from icg.cli import build_app

    secret = "sk-very-secret-token-123"
    file = tmp_path / "serve.yaml"
    file.write_text(f"api_key: {secret}\nmax_batch: 2\nmax_candidates: 4\n")
    base = ["serve", "--run", str(tmp_path), "--data", str(tmp_path), "--config", str(file)]
    result = CliRunner().invoke(build_app(), base)
    assert result.exit_code == 2 and "max_batch" in result.output
    assert secret not in result.output
    file.write_text("host: 127.0.0.2\nport: 8123\n")
    result = CliRunner().invoke(build_app(), [*base, "--dry-run"])
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.output)
    assert resolved["host"] == "127.0.0.2" and resolved["port"] == 8123
    result = CliRunner().invoke(build_app(), [*base, "--dry-run", "--port", "9000"])
    assert json.loads(result.output)["port"] == 9000  # the command line still wins


def test_a_client_disconnecting_mid_body_is_one_log_line():
    """Once ~60 lines of traceback at ERROR; now one INFO line, and the server keeps serving."""
    with server(log_level="info", body_timeout_s=30.0) as (url, _, proc):
        for _ in range(3):
            sock = connect(url, timeout=10)
            head = (
                f"POST /v1/covers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"item_id": "i0", ')
            time.sleep(0.2)  # the app is waiting for the rest of the body
            sock.close()
        ok = httpx.post(f"{url}/v1/covers", json={"item_id": "i0"}, headers=AUTH, timeout=30)
        assert ok.status_code == 200
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    lines = [line for line in output.splitlines() if "disconnect" in line.lower()]
    assert len(lines) == 3, output
    assert all(line.startswith("INFO ") for line in lines), lines
    assert "Traceback" not in output and "ERROR" not in output, output
