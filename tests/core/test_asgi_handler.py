"""The ASGI handler runs the middleware chain synchronously (core/handlers.py): the same middleware still
answer through it — request ids, token and session authentication, CSRF on session writes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.test import Client

from core.handlers import SyncChainASGIHandler
from tests.factories import make_token, make_user

# the handler serves on its own thread and connection: it must see committed rows
pytestmark = pytest.mark.django_db(transaction=True)


def call(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    async def run() -> tuple[int, dict[str, str], bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "testserver", **headers}.items()],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        }  # fmt: skip
        app = ApplicationCommunicator(SyncChainASGIHandler(), scope)
        await app.send_input({"type": "http.request", "body": body})
        start = await app.receive_output(30)
        content = b""
        while True:
            message = await app.receive_output(30)
            content += message.get("body", b"")
            if not message.get("more_body"):
                break
        await app.wait(30)
        return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, content

    return async_to_sync(run)()


def test_the_chain_is_built_in_sync_mode():
    assert not asyncio.iscoroutinefunction(SyncChainASGIHandler()._middleware_chain)


def test_a_token_request_gets_its_list_and_a_request_id():
    key = make_token(make_user("vera", "viewer"))
    status, headers, body = call(
        "GET", "/api/v1/devices/", {"authorization": f"Token {key}", "x-request-id": "abc-12345678"}
    )
    assert status == 200, body
    assert json.loads(body)["count"] == 0
    assert headers["x-request-id"] == "abc-12345678"
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_without_credentials_it_is_401_in_the_api_error_body():
    status, headers, body = call("GET", "/api/v1/devices/", {})
    assert status == 401
    assert json.loads(body)["request_id"] == headers["x-request-id"]


def test_a_session_write_without_a_csrf_token_is_refused():
    admin = make_user("ada", "admin")
    browser = Client()
    browser.force_login(admin)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    payload: dict[str, Any] = {"name": "lyon", "region": "eu-west", "latitude": 45.7, "longitude": 4.8}
    status, _, body = call(
        "POST", "/api/v1/sites/", {"cookie": cookie, "content-type": "application/json"}, json.dumps(payload).encode()
    )
    assert status == 403 and "CSRF" in json.loads(body)["detail"]
    # the same session reads (no CSRF for safe methods)
    assert call("GET", "/api/v1/sites/", {"cookie": cookie})[0] == 200
