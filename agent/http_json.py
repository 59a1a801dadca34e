"""The agent's small HTTP servers (inference, gateway cache): bounded, timed out, JSON answers.

A stdlib `ThreadingHTTPServer` starts a thread per connection and waits forever on each socket: eight
requests announcing 32 MB and sending nothing held eight threads for as long as the clients liked.
`BoundedHTTPServer` caps the connections served at once (one more is answered 503 and closed, without
a thread), and every handler reads with a per-operation socket timeout plus a deadline for the whole
request body, so a silent or trickling client is cut off and its slot freed.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_IO_TIMEOUT_S = 10.0  # per socket read or write, including the wait for the next keep-alive request
DEFAULT_BODY_TIMEOUT_S = 30.0  # for a whole request body, however it trickles in
_BUSY_BODY = json.dumps({"error": "too many connections"}).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Retry-After: 1\r\nContent-Length: {len(_BUSY_BODY)}\r\n\r\n".encode()
    + _BUSY_BODY
)

logger = logging.getLogger("fogdeck.agent.http")


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once; handlers get the timeouts from here."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        io_timeout_s: float = DEFAULT_IO_TIMEOUT_S,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    ) -> None:
        if max_connections < 1 or io_timeout_s <= 0 or body_timeout_s <= 0:
            raise ValueError("max_connections, io_timeout_s and body_timeout_s must be positive")
        self.max_connections = max_connections
        self.io_timeout_s = io_timeout_s
        self.body_timeout_s = body_timeout_s
        self.refused_busy = 0  # connections answered 503 because every slot was taken
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused_busy += 1
            logger.warning("refusing %s: %s connections already open", client_address, self.max_connections)
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class JsonRequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, access lines at debug level on `access_logger`, and `_json` for answers."""

    protocol_version = "HTTP/1.1"
    access_logger = logging.getLogger("fogdeck.agent.http")
    server: BoundedHTTPServer

    def setup(self) -> None:
        # StreamRequestHandler applies `timeout` to the socket: every read and write, and the idle wait
        # for the next request on a kept-alive connection, end with TimeoutError and a closed connection
        self.timeout = self.server.io_timeout_s  # type: ignore[misc]  # socketserver declares it a ClassVar
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        self.access_logger.debug("%s - %s", self.address_string(), format % args)

    def _json(self, status: HTTPStatus, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _bearer_ok(self, expected: str) -> bool:
        """True when the request carries `Authorization: Bearer <expected>` (compared in constant time)."""
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())

    def _refuse_unauthorized(self, expected: str | None) -> bool:
        """Answer 401/403 unless the bearer token matches; True when refused. No token configured refuses all."""
        if expected and self._bearer_ok(expected):
            return False
        if not expected:
            self._json(HTTPStatus.FORBIDDEN, {"error": "this endpoint is disabled: no token is configured"})
        elif not self.headers.get("Authorization"):
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "a bearer token is required"}, {"WWW-Authenticate": "Bearer"})
        else:
            self._json(HTTPStatus.FORBIDDEN, {"error": "token refused"})
        return True

    def _read_body(self, max_bytes: int) -> bytes | None:
        """The request body, or None after answering 411/413/408 (the connection is then closed).

        The whole body must arrive within the server's body deadline, not just each read."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
            return None
        if length < 0 or length > max_bytes:
            self.close_connection = True
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {max_bytes} bytes"})
            return None
        deadline = time.monotonic() + self.server.body_timeout_s
        chunks, received = [], 0
        try:
            while received < length:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(min(self.server.io_timeout_s, left))
                chunk = self.rfile.read1(min(length - received, 256 * 1024))
                if not chunk:
                    self.close_connection = True
                    return None  # the client went away
                chunks.append(chunk)
                received += len(chunk)
        except TimeoutError:
            self.close_connection = True
            logger.warning("%s sent %s of %s body bytes in time; closing", self.address_string(), received, length)
            self._json(HTTPStatus.REQUEST_TIMEOUT, {"error": "request body not received in time"})
            return None
        finally:
            self.connection.settimeout(self.server.io_timeout_s)
        return b"".join(chunks)

    def _refuse_body(self) -> bool:
        """For methods that take no body: a request announcing one is answered 413 and closed; True when refused."""
        if self.headers.get("Content-Length", "0").strip() in ("", "0") and "Transfer-Encoding" not in self.headers:
            return False
        self.close_connection = True
        self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "this request takes no body"})
        return True
