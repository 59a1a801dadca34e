"""`manage.py serve --workers N`: several uvicorn processes on the Redis channel layer, one on the embedded one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
import requests
from django.core.management import CommandError, call_command

from stack.management.commands import serve
from tests.processes import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
IN_MEMORY = "core.channels_relay.RelayedInMemoryChannelLayer"
REDIS = "channels_redis.core.RedisChannelLayer"
RELAY = "var/test-relay.sock"  # never bound: uvicorn is not started


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Records how `serve` would start uvicorn instead of starting it."""
    calls: dict[str, Any] = {}
    monkeypatch.setattr(serve.uvicorn, "run", lambda app, **kwargs: calls.update(run=(app, kwargs)))
    monkeypatch.setattr(
        serve.Command,
        "_serve_in_process",
        lambda self, host, port, relay, quiet=False: calls.update(in_process=(port, relay), quiet=quiet),
    )
    return calls


def test_several_workers_need_a_shared_channel_layer(settings, served):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": IN_MEMORY, "CONFIG": {"relay_socket": RELAY}}}
    with pytest.raises(CommandError, match="--workers 2 needs REDIS_URL"):
        call_command("serve", "--workers", "2", "--no-broker")
    assert served == {}


def test_several_workers_run_under_uvicorns_supervisor_with_an_import_string(settings, served):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": REDIS, "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]}}}
    call_command("serve", "--workers", "3", "--port", "8123", "--no-broker")
    app, kwargs = served["run"]
    assert app == "config.asgi:application"  # uvicorn refuses workers > 1 for an app object
    assert kwargs["workers"] == 3 and kwargs["port"] == 8123 and kwargs["lifespan"] == "off"
    assert "in_process" not in served


def test_one_worker_serves_in_process_with_the_embedded_relay(settings, served):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": IN_MEMORY, "CONFIG": {"relay_socket": RELAY}}}
    call_command("serve", "--port", "8124", "--no-broker")
    assert served == {"in_process": (8124, RELAY), "quiet": False}


def test_quiet_drops_the_access_log_for_the_demos_console(settings, served):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": REDIS, "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]}}}
    call_command("serve", "--workers", "2", "--no-broker", "--quiet")
    _, kwargs = served["run"]
    assert kwargs["access_log"] is False and kwargs["log_level"] == "warning"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": IN_MEMORY, "CONFIG": {"relay_socket": RELAY}}}
    call_command("serve", "--no-broker", "--quiet")
    assert served["quiet"] is True


def test_zero_workers_are_refused(settings, served):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": REDIS, "CONFIG": {}}}
    with pytest.raises(CommandError, match="at least 1"):
        call_command("serve", "--workers", "0", "--no-broker")
    assert served == {}


@pytest.mark.postgres_only(
    reason="serve --workers is the production shape: PostgreSQL's connection pool (DB_POOL) and the Redis layer; "
    "the embedded default refuses it (test_several_workers_need_a_shared_channel_layer)"
)
def test_two_worker_processes_answer_on_one_port_and_stop_with_the_supervisor(db, tmp_path):
    from django.db import connection

    port = free_port()
    database = connection.settings_dict  # the test database: the server's /healthz reads it
    login = quote(database["USER"]) + (f":{quote(database['PASSWORD'])}" if database["PASSWORD"] else "")
    url = f"postgres://{login}@{database['HOST']}:{database['PORT'] or 5432}/{database['NAME']}"
    env = {**os.environ, "DEBUG": "true", "FOGDECK_DATA_DIR": str(tmp_path), "DATABASE_URL": url,
           "DB_POOL": "true", "DB_CONN_MAX_AGE": "0", "ALLOWED_HOSTS": "127.0.0.1"}  # fmt: skip
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--workers", "2", "--no-broker"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    workers: list[psutil.Process] = []
    try:

        def two_workers() -> list[psutil.Process]:
            # uvicorn's workers are multiprocessing "spawn" children (next to its resource tracker)
            children = psutil.Process(process.pid).children()
            spawned = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
            return spawned if len(spawned) == 2 else []

        workers = wait_until(two_workers, 60, log.read_text)  # type: ignore[assignment]

        def answers() -> bool:
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=15)
            except requests.RequestException:
                return False
            return True

        wait_until(answers, 60, log.read_text)
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(30)
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"worker processes outlived the supervisor: {alive}"
