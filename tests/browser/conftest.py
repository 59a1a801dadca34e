"""Browser tests: Debian's Chromium driven by Playwright against `manage.py serve` (uvicorn, ASGI).

pytest-django's `live_server` speaks WSGI, which has no websockets; the device page's live chart needs
the real ASGI stack, so the server runs as a subprocess on the test database (committed data: the
tests are transactional). It uses its own Redis database for the channel layer, and so does this
process (whose ingest sends the updates), so no other test run's groups mix in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.db import connections
from playwright.sync_api import Page, sync_playwright

from tests.processes import ROOT, free_port, wait_for_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
PASSWORD = "not-used-in-tests-1!"  # tests.factories.make_user's password
LAYER_REDIS_DB = 7
T = TypeVar("T")


@dataclass
class Server:
    url: str
    output: Any


@pytest.fixture
def asgi_server(processes: Any, settings: Any) -> Server:
    return start_asgi_server(processes, settings)


def start_asgi_server(processes: Any, settings: Any, **extra: str) -> Server:
    env: dict[str, str] = {"DEBUG": "true", **extra}  # static files from the app directories (no collectstatic)
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        private = redis_url.rsplit("/", 1)[0] + f"/{LAYER_REDIS_DB}"
        env["REDIS_URL"] = private
        layer = settings.CHANNEL_LAYERS["default"]
        settings.CHANNEL_LAYERS = {
            "default": {**layer, "CONFIG": {**layer["CONFIG"], "hosts": [{"address": private, "socket_timeout": 30}]}}
        }
        # and the same cache: the server's consumers mark the groups they watch there (core/stream_watchers.py)
        # and this process, producing the telemetry, reads the marks
        settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": private}}
    port = free_port()
    proc = processes("web", "manage.py", "serve", "--port", str(port), "--no-broker", **env)
    wait_for_port(port, timeout=30)
    return Server(f"http://127.0.0.1:{port}", proc.output)


@pytest.fixture
def new_page() -> Iterator[Callable[..., Page]]:
    """Pages in a fresh headless Chromium. Playwright starts on first use, so fixtures and seeding that
    use the ORM (and `async_to_sync` broadcasts on commit) run before its event loop exists; after
    that, use `off_loop` for ORM work."""
    state: dict[str, Any] = {}

    def make(width: int = 1366, height: int = 900) -> Page:
        if "browser" not in state:
            state["playwright"] = sync_playwright().start()
            state["browser"] = state["playwright"].chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
        context = state["browser"].new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.set_default_timeout(20_000)
        return page

    yield make
    if "browser" in state:
        state["browser"].close()
        state["playwright"].stop()


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ORM work on a thread without Playwright's event loop (and close that thread's connection)."""

    def work() -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Page, server: Server, username: str) -> None:
    page.goto(f"{server.url}/login/")
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{server.url}/")
