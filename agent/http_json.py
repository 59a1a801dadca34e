"""The agent's small HTTP servers (inference, gateway cache) answer JSON the same way."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any


class JsonRequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, access lines at debug level on `access_logger`, and `_json` for answers."""

    protocol_version = "HTTP/1.1"
    access_logger = logging.getLogger("fogdeck.agent.http")

    def log_message(self, format: str, *args: Any) -> None:
        self.access_logger.debug("%s - %s", self.address_string(), format % args)

    def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
