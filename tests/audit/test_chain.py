from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from audit.actors import Actor
from audit.models import AppendOnlyError, AuditEntry
from audit.services import audit_record, audit_verify_chain
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def record(n: int) -> list[AuditEntry]:
    entries = []
    for i in range(n):
        with transaction.atomic():
            entries.append(
                audit_record(
                    actor=Actor.system("tests"),
                    action="thing.touch",
                    object_type="thing",
                    object_id=i,
                    changes={"value": {"before": i, "after": i + 1}, "ratio": 0.1 * i},
                )
            )
    return entries


def raw(sql: str, params: list[object]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_chain_links_each_entry_to_the_previous():
    entries = record(3)
    assert entries[1].prev_hash == entries[0].hash and entries[2].prev_hash == entries[1].hash
    assert audit_verify_chain().ok
    call_command("verify_audit")


def test_verify_audit_names_an_edited_entry():
    entries = record(4)
    raw("UPDATE audit_auditentry SET actor = %s WHERE id = %s", ["user:mallory", entries[2].pk])
    with pytest.raises(CommandError, match=f"entry #{entries[2].pk}: content does not match"):
        call_command("verify_audit")


def test_verify_audit_catches_a_deleted_entry():
    entries = record(4)
    raw("DELETE FROM audit_auditentry WHERE id = %s", [entries[1].pk])
    with pytest.raises(CommandError, match=f"entry #{entries[2].pk}: prev_hash does not match"):
        call_command("verify_audit")


def test_verify_audit_catches_the_newest_entry_deleted():
    entries = record(3)
    raw("DELETE FROM audit_auditentry WHERE id = %s", [entries[-1].pk])
    with pytest.raises(CommandError, match="newest entries were deleted"):
        call_command("verify_audit")


def test_verify_audit_catches_reordering():
    a, b, _ = record(3)
    swap = ["actor", "action", "object_id", "changes", "created_at", "prev_hash", "hash"]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(swap)} FROM audit_auditentry WHERE id = %s", [a.pk])  # noqa: S608
        row_a = cursor.fetchone()
        cursor.execute(f"SELECT {', '.join(swap)} FROM audit_auditentry WHERE id = %s", [b.pk])  # noqa: S608
        row_b = cursor.fetchone()
        assignments = ", ".join(f"{c} = %s" for c in swap)
        cursor.execute(f"UPDATE audit_auditentry SET hash = %s WHERE id = %s", ["x" * 64, a.pk])  # noqa: F541
        cursor.execute(f"UPDATE audit_auditentry SET {assignments} WHERE id = %s", [*row_a, b.pk])  # noqa: S608
        cursor.execute(f"UPDATE audit_auditentry SET {assignments} WHERE id = %s", [*row_b, a.pk])  # noqa: S608
    report = audit_verify_chain()
    assert not report.ok and report.problem.entry_id == a.pk


def test_entries_are_append_only_through_the_orm():
    (entry,) = record(1)
    entry.actor = "user:mallory"
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        AuditEntry.objects.all().update(actor="x")
    with pytest.raises(AppendOnlyError):
        AuditEntry.objects.all().delete()


@pytest.mark.django_db(transaction=True)
def test_audit_record_refuses_to_run_outside_a_transaction():
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit_record(actor=Actor.system("tests"), action="x", object_type="x")


def test_audit_api_filters_and_exports_csv(admin_client, viewer_client):
    device = DeviceFactory()
    admin_client.patch(f"/api/v1/devices/{device.pk}/", {"memory_mb": 4096}, format="json")
    listed = viewer_client.get("/api/v1/audit/?actor=alice-admin").json()["results"]
    assert [e["action"] for e in listed] == ["device.update"]
    assert set(listed[0]) >= {
        "actor",
        "action",
        "object_type",
        "object_id",
        "changes",
        "request_id",
        "created_at",
        "hash",
        "prev_hash",
    }
    by_object = viewer_client.get(f"/api/v1/audit/?object_type=device&object_id={device.pk}").json()["results"]
    assert [e["action"] for e in by_object] == ["device.update", "device.create"]
    assert viewer_client.get("/api/v1/audit/?since=2999-01-01T00:00:00Z").json()["count"] == 0
    response = viewer_client.get("/api/v1/audit/?format=csv&object_type=device")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    lines = b"".join(response.streaming_content).decode().strip().splitlines()
    assert lines[0].startswith("id,created_at,actor,action") and len(lines) == 3
    assert viewer_client.post("/api/v1/audit/", {}, format="json").status_code in (403, 405)
