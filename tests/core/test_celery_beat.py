"""The beat schedule (config/celery.py): every entry names a registered task, intervals come from settings."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils import timezone

from audit.models import AuditEntry
from config.celery import app, beat_schedule
from mqttbridge.tasks import prune_outbox
from outbox.models import OutboxMessage

ROOT = Path(__file__).resolve().parents[2]


def test_every_scheduled_task_is_registered() -> None:
    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    assert schedule == beat_schedule()
    missing = [entry["task"] for entry in schedule.values() if entry["task"] not in app.tasks]
    assert missing == []


def test_the_outbox_is_pruned_by_beat() -> None:
    assert any(entry["task"] == "mqttbridge.tasks.prune_outbox" for entry in app.conf.beat_schedule.values())


def test_intervals_come_from_settings(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ROLLOUT_TICK_SECONDS = 7
    settings.DRIFT_EVALUATE_SECONDS = 600
    schedule = beat_schedule()
    assert schedule["deployments-rollouts-tick"]["schedule"] == 7.0
    assert schedule["telemetry-evaluate-drift"]["schedule"] == 600.0


def test_a_bad_interval_names_its_variable() -> None:
    env = {**os.environ, "ROLLOUT_TICK_SECONDS": "two"}
    result = subprocess.run(
        [sys.executable, "-c", "from config.celery import app; app.conf.beat_schedule"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ROLLOUT_TICK_SECONDS" in result.stderr


@pytest.mark.django_db
def test_prune_outbox_deletes_only_old_published_rows(settings) -> None:  # type: ignore[no-untyped-def]
    settings.OUTBOX_RETENTION_DAYS = 7
    now = timezone.now()
    old = OutboxMessage.objects.create(topic="t/old", payload=b"{}", published_at=now - dt.timedelta(days=8))
    recent = OutboxMessage.objects.create(topic="t/recent", payload=b"{}", published_at=now - dt.timedelta(days=6))
    pending = OutboxMessage.objects.create(topic="t/pending", payload=b"{}")
    OutboxMessage.objects.filter(pk=pending.pk).update(created_at=now - dt.timedelta(days=30))

    assert prune_outbox() == 1
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {recent.pk, pending.pk}
    assert not OutboxMessage.objects.filter(pk=old.pk).exists()
    assert prune_outbox() == 0
    [entry] = AuditEntry.objects.filter(action="outbox.pruned")  # the run that deleted nothing is not
    assert entry.actor == "system:celery:outbox-prune" and entry.changes == {"deleted": 1, "older_than_days": 7}
