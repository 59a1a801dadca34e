from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.cache import cache


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP endpoint on loopback that answers with the scripted status codes, then 200."""

    url: str
    script: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    # webhooks go to public addresses only unless a network is allowed, as an on-premises install would
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    state = Receiver(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.received.append(Received(headers=dict(self.headers.items()), body=body))
                code = state.script.pop(0) if state.script else 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/fogdeck"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def eager_celery(settings: Any) -> Iterator[None]:
    """Tasks run in-process, retries included (their countdown is skipped; the backoff is unit-tested)."""
    from config.celery import app

    settings.WEBHOOK_BACKOFF_SECONDS = 0
    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    # propagation would hand the eager Retry to the caller instead of running the retry
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, False
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()
