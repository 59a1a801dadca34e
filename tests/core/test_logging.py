"""LOG_FORMAT=json: one JSON object per line, carrying the request id and the actor."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from core.logging import JsonFormatter, RequestContextFilter
from tests.processes import ROOT, process_env, wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def json_lines():
    """What fogdeck.request and fogdeck.* log, formatted as LOG_FORMAT=json formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    logger = logging.getLogger("fogdeck")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_a_request_line_carries_the_request_id_and_the_token_user(admin_client, settings, json_lines):
    settings.LOG_REQUESTS = True
    response = admin_client.get("/api/v1/devices/?tier=edge", HTTP_X_REQUEST_ID="ci-run-000123")
    assert response["X-Request-ID"] == "ci-run-000123"
    [line] = [row for row in json_lines() if row["logger"] == "fogdeck.request"]
    assert line["request_id"] == "ci-run-000123"
    assert line["actor"] == "user:alice-admin"  # authenticated by token inside DRF, after the middleware ran
    assert line["status"] == 200 and line["method"] == "GET" and line["path"] == "/api/v1/devices/"
    assert line["view"] == "device-list" and line["duration_ms"] >= 0 and line["level"] == "INFO"
    assert line["time"].endswith("+00:00")


def test_an_anonymous_refusal_is_logged_with_its_own_request_id(anon_client, settings, json_lines):
    settings.LOG_REQUESTS = True
    response = anon_client.get("/api/v1/devices/")
    [line] = [row for row in json_lines() if row["logger"] == "fogdeck.request"]
    assert line["request_id"] == response["X-Request-ID"] and len(line["request_id"]) == 32
    assert line["actor"] == "anonymous" and line["status"] == 401


def test_log_format_json_makes_every_record_a_json_line():
    """The settings' LOGGING with LOG_FORMAT=json, in a fresh process: a plain logger call prints JSON."""
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('fogdeck.outbox').warning('outbox publish of #%s failed', 7, extra={'topic': 't/1'})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT,
        env=process_env(LOG_FORMAT="json", DJANGO_SETTINGS_MODULE="config.settings"),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    [line] = [json.loads(row) for row in done.stderr.splitlines() if row.startswith("{")]
    assert line["message"] == "outbox publish of #7 failed" and line["topic"] == "t/1"
    assert line["level"] == "WARNING" and line["logger"] == "fogdeck.outbox"
    assert line["request_id"] == "" and line["actor"] == ""


def test_an_unknown_log_format_is_refused():
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=ROOT,
        env=process_env(LOG_FORMAT="xml", DJANGO_SETTINGS_MODULE="config.settings"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "LOG_FORMAT" in done.stderr


def test_a_celery_worker_logs_json_lines_too(processes, tmp_path):
    """Celery would put its own plain handler on the root logger; with LOG_FORMAT=json it keeps ours."""
    worker = processes(
        "worker", "-m", "celery", "-A", "config", "--quiet", "worker", "--pool", "solo", "--loglevel", "INFO",
        "-n", "json-logs@%h", LOG_FORMAT="json", FOGDECK_DATA_DIR=str(tmp_path / "data"),
    )  # fmt: skip

    def ready() -> list[dict]:
        lines = [json.loads(row) for row in worker.output().splitlines() if row.startswith("{")]
        return [line for line in lines if line["logger"] == "celery.apps.worker" and "ready" in line["message"]]

    wait_until(ready, 60, lambda: f"a JSON 'ready' line from the worker\n{worker.output()[-2000:]}")
    # no plain Celery log lines ("[2026-… INFO/MainProcess] …"); --quiet dropped the start-up banner
    assert not [row for row in worker.output().splitlines() if row.startswith("[20")]
