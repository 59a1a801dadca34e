"""The demo's console: third-party INFO silenced, one status line, the banner with the URL and password."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pytest
from django.conf import settings
from django.utils import timezone

from agent.telemetry import TelemetryRecorder
from audit.actors import Actor
from deployments.services.jobs import deployment_create
from fleet.models import ConnectionStatus, Device
from protocol.messages import TelemetryMessage, utc_now
from stack.demo_status import DemoStatus, demo_status, format_banner, format_status
from telemetry.services import TelemetryEnvelope, telemetry_ingest_batch
from tests.factories import DeviceFactory

ACTOR = Actor.system("tests")


@pytest.mark.parametrize("name", ["amqtt.broker", "amqtt.mqtt.protocol", "transitions.core", "hbmqtt.broker"])
def test_chatty_libraries_log_warnings_but_not_info(name):
    # settings.LOGGING is applied at start-up, as in every process the demo runs
    logger = logging.getLogger(name)

    assert not logger.isEnabledFor(logging.INFO)
    assert logger.isEnabledFor(logging.WARNING)


def test_our_own_info_still_follows_log_level():
    assert settings.THIRD_PARTY_LOG_LEVEL == "WARNING"
    root_level = logging.getLogger().getEffectiveLevel()

    assert logging.getLogger("fogdeck.bridge").getEffectiveLevel() == root_level


def test_the_status_line_lists_job_states_in_life_order_and_leaves_out_empty_ones():
    status = DemoStatus(
        at=dt.datetime(2026, 12, 2, 6, 41, 20, tzinfo=dt.UTC),
        devices_online=229,
        devices_total=240,
        rollouts_active=1,
        jobs={"SUCCEEDED": 1234, "QUEUED": 3, "IN_PROGRESS": 5, "FAILED": 0, "ROLLED": 9},
        telemetry_per_minute=1372,
    )

    assert format_status(status) == (
        "[demo 06:41:20] devices online 229/240 | rollouts active 1 | "
        "jobs queued 3, running 5, succeeded 1,234 | telemetry 1,372 rows/min"
    )


def test_the_status_line_says_none_when_there_are_no_jobs():
    status = DemoStatus(at=timezone.now(), devices_online=0, devices_total=0, rollouts_active=0)

    assert "| jobs none |" in format_status(status)


def test_the_banner_holds_the_url_the_password_and_any_scenario_line():
    banner = format_banner(url="http://127.0.0.1:8102", password="s3cret-pw", extra=("  scenario: watch /rollouts/1/",))

    lines = banner.splitlines()
    assert lines[0] == "Fogdeck demo: http://127.0.0.1:8102/"
    assert "password: s3cret-pw" in lines[1]
    assert "  scenario: watch /rollouts/1/" in lines
    assert lines[-1].startswith("  (set DEMO_PASSWORD")


@pytest.mark.django_db
def test_demo_status_counts_devices_rollouts_jobs_and_the_last_minutes_telemetry(published_version):
    online = [DeviceFactory(uid=f"on-{i}") for i in range(3)]
    DeviceFactory(uid="off-0")
    Device.objects.filter(uid__startswith="on-").update(status=ConnectionStatus.ONLINE)
    deployment_create(actor=ACTOR, device=online[0], version=published_version)
    recorder_rows = []
    for device in online[:2]:
        recorder = TelemetryRecorder()
        recorder.record_latencies(published_version.model.name, published_version.number, np.full(20, 4.0))
        message = TelemetryMessage(schema_version=1, ts=utc_now(), interval_s=10.0, samples=recorder.drain())
        recorder_rows.append(TelemetryEnvelope(device.uid, message))
    telemetry_ingest_batch(recorder_rows)

    now = demo_status()
    later = demo_status(now=timezone.now() + dt.timedelta(minutes=2))

    assert (now.devices_online, now.devices_total, now.rollouts_active) == (3, 4, 0)
    assert now.jobs == {"QUEUED": 1}
    assert now.telemetry_per_minute == 2
    assert later.telemetry_per_minute == 0  # rows per minute: only the last minute counts
