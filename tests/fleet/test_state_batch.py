"""devices_report_state_many: a bridge batch of state reports, written in one statement."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEntry
from fleet.models import Device
from fleet.services import devices_report_state_many
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def state(version: int, url: str = "") -> dict[str, object]:
    return {
        "schema_version": 1, "agent_version": "9.9", "active": {"m": {"version": version, "slot": "a"}},
        "inference_url": url, "runtimes": [{"name": "onnxruntime", "version": "1.18"}], "note": "ünïcode \"quoted\"",
    }  # fmt: skip


def test_every_reported_column_is_stored_and_only_active_model_changes_are_audited():
    first, second = DeviceFactory(), DeviceFactory()
    audits_before = AuditEntry.objects.filter(action="device.active_models_changed").count()
    with CaptureQueriesContext(connection) as queries:
        refused = devices_report_state_many(
            reports=[
                (first.uid, state(1, "http://first.example:8600/infer"), "1.2.3"),
                (second.uid, state(2), "x" * 60),
                ("nobody", state(1), "1.0"),
            ]
        )
    assert refused == {"nobody": "unknown_device"}
    updates = [q for q in queries.captured_queries if q["sql"].startswith("UPDATE") and "fleet_device" in q["sql"]]
    assert len(updates) == 1  # both devices in one statement
    stored = {d.uid: d for d in Device.objects.filter(uid__in=[first.uid, second.uid])}
    assert stored[first.uid].reported_state == state(1, "http://first.example:8600/infer")
    assert stored[first.uid].inference_url == "http://first.example:8600/infer"
    assert stored[first.uid].agent_version == "1.2.3"
    assert stored[second.uid].agent_version == "x" * 40  # cut to the column
    for device in stored.values():
        assert device.reported_at is not None and device.last_seen == device.reported_at == device.updated_at
    assert AuditEntry.objects.filter(action="device.active_models_changed").count() == audits_before + 2

    devices_report_state_many(reports=[(first.uid, state(1, "http://first.example:8600/infer"), "1.2.4")])
    assert AuditEntry.objects.filter(action="device.active_models_changed").count() == audits_before + 2
    assert Device.objects.get(uid=first.uid).agent_version == "1.2.4"
