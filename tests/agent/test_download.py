"""agent/download.py: a dropped connection resumes with a Range request and fetches only the rest."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.download import DownloadFailed, RetryPolicy, fetch

ARTIFACT = bytes(range(256)) * 4096  # 1 MiB
CUT_AT = 300_000
NO_WAIT = RetryPolicy(attempts=3, backoff_s=0.0)


@dataclass
class Served:
    """What the server saw and sent, per request."""

    ranges: list[str | None] = field(default_factory=list)
    bytes_sent: list[int] = field(default_factory=list)
    cut_first: bool = True
    honour_range: bool = True
    status: int = 200


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            served.ranges.append(self.headers.get("Range"))
            if served.status != 200:
                served.bytes_sent.append(0)
                self.send_error(served.status)
                return
            start = 0
            requested = self.headers.get("Range")
            if requested and served.honour_range:
                start = int(requested.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(ARTIFACT) - 1}/{len(ARTIFACT)}")
            else:
                self.send_response(200)
            body = ARTIFACT[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # Recorded before writing: the client may read the last byte and the test assert
            # before this thread runs again.
            if served.cut_first and len(served.ranges) == 1:
                served.bytes_sent.append(CUT_AT)
                self.wfile.write(body[:CUT_AT])  # then the connection drops mid-body
                self.wfile.flush()
                self.close_connection = True
                return
            served.bytes_sent.append(len(body))
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/model.onnx", served
    finally:
        httpd.shutdown()
        httpd.server_close()


def _fetch(url: str, target: Path, retry: RetryPolicy = NO_WAIT) -> tuple[int, str]:
    return fetch(url, target, timeout=10, deadline=time.monotonic() + 60, max_bytes=len(ARTIFACT), retry=retry)


def test_an_interrupted_download_resumes_and_fetches_only_the_rest(server: tuple[str, Served], tmp_path: Path) -> None:
    url, served = server
    size, sha256 = _fetch(url, tmp_path / "model.part")

    assert (size, sha256) == (len(ARTIFACT), hashlib.sha256(ARTIFACT).hexdigest())
    assert served.ranges == [None, f"bytes={CUT_AT}-"]
    assert served.bytes_sent == [CUT_AT, len(ARTIFACT) - CUT_AT]  # the whole artifact crossed the wire once
    assert (tmp_path / "model.part").read_bytes() == ARTIFACT


def test_a_server_that_ignores_range_is_read_from_the_start(server: tuple[str, Served], tmp_path: Path) -> None:
    url, served = server
    served.honour_range = False
    size, sha256 = _fetch(url, tmp_path / "model.part")

    assert (size, sha256) == (len(ARTIFACT), hashlib.sha256(ARTIFACT).hexdigest())
    assert served.bytes_sent == [CUT_AT, len(ARTIFACT)]


def test_retries_wait_with_backoff_and_then_give_up(tmp_path: Path) -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=4, backoff_s=0.5, max_backoff_s=1.5, jitter=0.0)
    with pytest.raises(DownloadFailed, match="after 4 attempts"):
        fetch(
            "http://127.0.0.1:9/nothing-listens-here",
            tmp_path / "x.part",
            timeout=2,
            deadline=time.monotonic() + 60,
            retry=policy,
            sleep=waits.append,
        )
    assert waits == [0.5, 1.0, 1.5]


def test_a_permanent_http_error_is_not_retried(server: tuple[str, Served], tmp_path: Path) -> None:
    url, served = server
    served.status = 404
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        _fetch(url, tmp_path / "x.part")
    assert len(served.ranges) == 1
