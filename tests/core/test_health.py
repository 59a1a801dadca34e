from __future__ import annotations

import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db


@pytest.fixture
def configured_broker(settings):  # type: ignore[no-untyped-def]
    """The MQTT broker the configuration names, running as a deployment has it: CI's Mosquitto, or on the
    embedded default the in-process broker `manage.py serve` starts (here on a free port)."""
    if not settings.EMBEDDED_MQTT:
        yield
        return
    from stack.mqtt import embedded_broker
    from tests.processes import free_port

    settings.MQTT_PORT = free_port()
    broker = embedded_broker(port=settings.MQTT_PORT)
    broker.start_in_thread()
    try:
        yield
    finally:
        broker.stop_thread()


def test_healthz_reports_every_backend(client, configured_broker):
    response = client.get("/healthz")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok" and body["down"] == []
    assert set(body["checks"]) == {"database", "channel_layer", "mqtt", "storage"}
    assert all(check["ok"] for check in body["checks"].values())


def test_healthz_is_503_naming_the_backend_that_is_down(client):
    with override_settings(MQTT_HOST="127.0.0.1", MQTT_PORT=1):  # nothing listens on port 1
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down" and body["down"] == ["mqtt"]
    assert "cannot reach 127.0.0.1:1" in body["checks"]["mqtt"]["error"]
    assert body["checks"]["database"]["ok"] is True


def test_healthz_names_broken_storage(client, tmp_path, configured_broker):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    storages = {
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(blocked)},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(STORAGES=storages):
        from django.core.files.storage import default_storage

        default_storage._wrapped = None  # re-read STORAGES  # type: ignore[attr-defined]
        try:
            response = client.get("/healthz")
        finally:
            default_storage._wrapped = None  # type: ignore[attr-defined]
    assert response.status_code == 503 and response.json()["down"] == ["storage"]


def test_request_id_is_echoed_and_generated(client):
    assert len(client.get("/healthz")["X-Request-ID"]) == 32
    assert client.get("/healthz", HTTP_X_REQUEST_ID="trace-12345678")["X-Request-ID"] == "trace-12345678"
    assert client.get("/healthz", HTTP_X_REQUEST_ID="bad id\n")["X-Request-ID"] != "bad id\n"
