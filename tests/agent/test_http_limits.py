"""Issue 14, finding 6: the agent's HTTP servers bound what one client can hold, and guard what is not public.

Before: no socket timeouts and a thread per connection without a cap (8 requests announcing 32 MB and
sending nothing each held a thread for 45 s+), the gateway bound 0.0.0.0 by default, and `/v1/stats`
listed the cached artifact hashes to anyone.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import build_parser
from agent.gateway import ArtifactCache, GatewayServer
from agent.http_api import InferenceServer
from agent.telemetry import TelemetryRecorder

SILENT_BODY = b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4194304\r\n\r\n"


def get(url: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:  # noqa: S310
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def closed_by_server(sock: socket.socket, within: float) -> bytes:
    """What the server sent before closing the connection; fails if it is still open after `within` s."""
    sock.settimeout(within)
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    pytest.fail(f"the server kept the connection open for {within} s (got {received[:80]!r})")


@pytest.fixture
def inference() -> Iterator[InferenceServer]:
    server = InferenceServer(
        host="127.0.0.1",
        port=0,
        current_model=lambda: None,
        telemetry=TelemetryRecorder(),
        health=lambda: {},
        max_connections=4,
        io_timeout_s=1.0,
        body_timeout_s=2.0,
    )
    server.start()
    yield server
    server.stop()


def test_clients_announcing_a_body_and_sending_nothing_are_cut_off_and_release_their_threads(inference):
    silent = []
    for _ in range(8):  # twice the cap: the extra ones are answered at once instead of each taking a thread
        sock = socket.create_connection(("127.0.0.1", inference.port))
        sock.sendall(SILENT_BODY)
        silent.append(sock)
    answers = [closed_by_server(sock, within=5.0) for sock in silent]
    for sock in silent:
        sock.close()

    statuses = [answer.split(b" ", 2)[1] for answer in answers]
    # each held a slot for one io timeout and got 408, or found every slot taken and got 503 at once
    assert set(statuses) <= {b"408", b"503"}, statuses
    assert b"503" in statuses and inference._httpd.refused_busy >= 1
    # every slot is free again: a normal request is served
    assert get(f"http://127.0.0.1:{inference.port}/healthz")[0] == 200


def test_a_body_that_trickles_in_is_cut_off_at_the_body_deadline(inference):
    sock = socket.create_connection(("127.0.0.1", inference.port))
    sock.sendall(SILENT_BODY.replace(b"4194304", b"1000"))
    started = time.monotonic()
    try:
        while time.monotonic() - started < 6:  # one byte every 0.5 s: never idle for a whole io timeout
            sock.sendall(b" ")
            time.sleep(0.5)
    except OSError:
        pass  # the server closed it
    answer = closed_by_server(sock, within=2.0)
    sock.close()
    assert b" 408 " in answer.split(b"\r\n", 1)[0] + b" "
    assert time.monotonic() - started < 5.0


def test_an_idle_keep_alive_connection_is_closed(inference):
    sock = socket.create_connection(("127.0.0.1", inference.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = closed_by_server(sock, within=4.0)  # answered, then closed after 1 s of silence
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200")


def test_an_oversize_body_is_refused_before_it_is_read():
    server = InferenceServer(
        host="127.0.0.1", port=0, current_model=lambda: None, telemetry=TelemetryRecorder(), health=lambda: {},
        max_body_bytes=1024,
    )  # fmt: skip
    server.start()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(SILENT_BODY.replace(b"4194304", b"1025"))
        answer = closed_by_server(sock, within=3.0)
        sock.close()
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 413")


def test_with_a_token_infer_needs_it():
    server = InferenceServer(
        host="127.0.0.1", port=0, current_model=lambda: None, telemetry=TelemetryRecorder(), health=lambda: {},
        token="s3cret-token",
    )  # fmt: skip
    server.start()
    url = f"http://127.0.0.1:{server.port}/infer"
    body = json.dumps({"inputs": {"x": [[1.0]]}}).encode()

    def post(token: str | None) -> int:
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert post(None) == 401
        assert post("wrong") == 403
        assert post("s3cret-token") == 503  # authorized; no model is active in this test
    finally:
        server.stop()


@pytest.fixture
def gateway_server(tmp_path: Path) -> Iterator[GatewayServer]:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=1 << 20)
    (tmp_path / "cache" / ("ab" * 32)).write_bytes(b"")  # not a valid entry; the cache drops it
    server = GatewayServer(
        cache=cache, gateway_uid="gw-1", public_key=lambda _kid: None, host="127.0.0.1", port=0,
        stats_token="stats-secret",
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


def test_gateway_stats_need_the_stats_token(gateway_server):
    url = f"{gateway_server.url}/v1/stats"
    assert get(url) == (401, {"error": "a bearer token is required"})
    assert get(url, "not-it")[0] == 403
    status, body = get(url, "stats-secret")
    assert status == 200 and body["entries"] == []
    assert get(f"{gateway_server.url}/healthz")[0] == 200  # liveness stays public


def test_gateway_without_a_stats_token_refuses_stats(tmp_path):
    server = GatewayServer(
        cache=ArtifactCache(tmp_path / "cache", max_bytes=1 << 20), gateway_uid="gw-1",
        public_key=lambda _kid: None, host="127.0.0.1", port=0,
    )  # fmt: skip
    server.start()
    try:
        status, body = get(f"{server.url}/v1/stats", "anything")
    finally:
        server.stop()
    assert status == 403 and "entries" not in body


def test_gateway_cache_binds_loopback_unless_told_otherwise():
    args = build_parser().parse_args(
        ["--api", "http://cp", "--mqtt", "mqtt://b", "--device-id", "gw-1", "--state-dir", "state", "--gateway"]
    )
    assert args.cache_host == "127.0.0.1"
    assert args.host == "127.0.0.1"
