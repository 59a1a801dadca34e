from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.actors import Actor
from audit.models import AuditEntry
from core.stream_watchers import stream_watch
from fleet.services import device_revoke
from protocol.streams import device_group
from telemetry import services, streaming
from telemetry.models import TelemetryRollup, TelemetrySample
from telemetry.services import telemetry_enforce_retention, telemetry_ingest_batch
from tests.factories import DeviceFactory, SiteFactory
from tests.telemetry.helpers import envelope

pytestmark = pytest.mark.django_db
MINUTE = dt.datetime(2025, 3, 1, 12, 30, tzinfo=dt.UTC)


def test_batch_stores_raw_samples_and_skips_unknown_and_revoked_devices():
    a, b, gone = DeviceFactory(), DeviceFactory(), DeviceFactory()
    device_revoke(actor=Actor.system("tests"), device=gone, reason="stolen")
    stored = telemetry_ingest_batch(
        [
            envelope(a.uid, ts=MINUTE + dt.timedelta(seconds=5), p95=21.5),
            envelope(b.uid, ts=MINUTE + dt.timedelta(seconds=7)),
            envelope("nobody-knows-me", ts=MINUTE),
            envelope(gone.uid, ts=MINUTE),
        ]
    )
    assert stored == 2
    row = TelemetrySample.objects.get(device=a)
    assert (row.model_name, row.version_number, row.p95_ms, row.requests) == ("demo-classifier", 1, 21.5, 100)
    assert row.inputs["x0"]["count"] == 100
    assert not TelemetrySample.objects.filter(device=gone).exists()


def test_batch_uses_a_constant_number_of_statements_whatever_its_size():
    devices = [DeviceFactory() for _ in range(30)]

    def statements(count: int) -> int:
        batch = [envelope(d.uid, ts=MINUTE + dt.timedelta(seconds=i)) for i, d in enumerate(devices[:count])]
        with CaptureQueriesContext(connection) as ctx:
            telemetry_ingest_batch(batch)
        return len(ctx.captured_queries)

    assert statements(3) == statements(30)


def test_rollups_combine_counts_weighted_means_and_maxima_per_profile():
    site = SiteFactory()
    arm = [DeviceFactory(site=site, arch="aarch64", cpu="A72") for _ in range(2)]
    x86 = DeviceFactory(site=site, arch="x86_64", cpu="Xeon")
    telemetry_ingest_batch(
        [
            envelope(arm[0].uid, ts=MINUTE + dt.timedelta(seconds=10), requests=100, errors=1, p95=10, p99=12),
            envelope(arm[1].uid, ts=MINUTE + dt.timedelta(seconds=20), requests=300, errors=3, p95=30, p99=50),
            envelope(x86.uid, ts=MINUTE + dt.timedelta(seconds=20), requests=50, p95=5),
        ]
    )
    # a later batch for the same minute and profile folds into the same row
    telemetry_ingest_batch([envelope(arm[0].uid, ts=MINUTE + dt.timedelta(seconds=40), requests=100, p95=20)])

    rollup = TelemetryRollup.objects.get(arch="aarch64")
    assert rollup.minute == MINUTE
    assert (rollup.samples, rollup.requests, rollup.errors) == (3, 500, 4)
    assert rollup.p95_mean == pytest.approx((100 * 10 + 300 * 30 + 100 * 20) / 500)
    assert (rollup.p95_max, rollup.p99_max) == (30, 50)
    assert TelemetryRollup.objects.get(arch="x86_64").requests == 50
    assert TelemetryRollup.objects.count() == 2


def test_samples_in_different_minutes_or_versions_get_their_own_rollups():
    device = DeviceFactory()
    telemetry_ingest_batch(
        [
            envelope(device.uid, ts=MINUTE + dt.timedelta(seconds=59)),
            envelope(device.uid, ts=MINUTE + dt.timedelta(seconds=60)),
            envelope(device.uid, ts=MINUTE + dt.timedelta(seconds=61), version=2),
        ]
    )
    keys = set(TelemetryRollup.objects.values_list("minute", "version_number"))
    assert keys == {(MINUTE, 1), (MINUTE + dt.timedelta(minutes=1), 1), (MINUTE + dt.timedelta(minutes=1), 2)}


def test_a_failed_batch_leaves_neither_raw_rows_nor_rollups(monkeypatch):
    device = DeviceFactory()

    def broken(rollups):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services, "_upsert_rollups", broken)
    with pytest.raises(RuntimeError):
        telemetry_ingest_batch([envelope(device.uid, ts=MINUTE)])
    assert not TelemetrySample.objects.exists()
    assert not TelemetryRollup.objects.exists()


def test_websocket_update_is_offered_on_commit_with_the_latest_point_per_version(
    django_capture_on_commit_callbacks, monkeypatch
):
    offered: list[dict] = []
    monkeypatch.setattr(services, "stream_offer", offered.append)
    device, unwatched = DeviceFactory(), DeviceFactory()
    stream_watch([device_group(device.pk)])  # the device page is open; the other device's is not
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        telemetry_ingest_batch(
            [
                envelope(device.uid, ts=MINUTE + dt.timedelta(seconds=20), p95=22.0),
                envelope(device.uid, ts=MINUTE + dt.timedelta(seconds=10), p95=11.0),
                envelope(unwatched.uid, ts=MINUTE, p95=5.0),
            ]
        )
    assert offered == []  # nothing before commit
    assert len(callbacks) == 1
    callbacks[0]()
    assert list(offered[0]) == [device_group(device.pk)]  # nothing computed for a page nobody has open
    items = offered[0][device_group(device.pk)]
    assert list(items) == ["demo-classifier:1"]
    assert items["demo-classifier:1"]["p95_ms"] == 22.0


def test_coalescer_merges_many_updates_into_one_message_per_group_with_the_latest_figures():
    coalescer = streaming.Coalescer(interval_s=0.2, send=_never)
    coalescer._ensure_thread = lambda: None  # exercise the merge without the sending thread
    for p95 in range(50):
        coalescer.offer({"device.1": {"m:1": {"p95_ms": p95}}, "device.2": {"m:1": {"p95_ms": -p95}}})
    coalescer.offer({"device.1": {"m:2": {"p95_ms": 7}}})
    batch = dict(coalescer.take())
    assert set(batch) == {"device.1", "device.2"}
    assert batch["device.1"]["items"] == [{"p95_ms": 49}, {"p95_ms": 7}]
    assert batch["device.2"]["items"] == [{"p95_ms": -49}]
    assert coalescer.take() == []


async def _never(group: str, event: dict) -> None:
    raise AssertionError("the test drains the coalescer itself")


def test_retention_deletes_old_rows_audits_once_and_rerun_changes_nothing(settings):
    settings.TELEMETRY_RAW_RETENTION_HOURS = 2
    settings.TELEMETRY_ROLLUP_RETENTION_DAYS = 1
    device = DeviceFactory()
    now = dt.datetime.now(dt.UTC)
    telemetry_ingest_batch(
        [envelope(device.uid, ts=now - dt.timedelta(days=3)), envelope(device.uid, ts=now - dt.timedelta(minutes=5))]
    )
    TelemetrySample.objects.filter(ts__lt=now - dt.timedelta(days=1)).update(received_at=now - dt.timedelta(hours=3))

    result = telemetry_enforce_retention(actor=Actor.system("tests"), now=now)

    assert (result.raw_deleted, result.rollups_deleted) == (1, 1)
    assert TelemetrySample.objects.count() == 1
    assert TelemetryRollup.objects.count() == 1
    entry = AuditEntry.objects.filter(action="telemetry.retention").get()
    assert entry.changes["raw_deleted"] == 1 and entry.actor == "system:tests"
    again = telemetry_enforce_retention(actor=Actor.system("tests"), now=now)
    assert (again.raw_deleted, again.rollups_deleted) == (0, 0)
    assert AuditEntry.objects.filter(action="telemetry.retention").count() == 1


def test_retention_task_runs_the_service(settings):
    from telemetry.tasks import enforce_retention

    settings.TELEMETRY_RAW_RETENTION_HOURS = 1
    device = DeviceFactory()
    telemetry_ingest_batch([envelope(device.uid, ts=MINUTE)])
    TelemetrySample.objects.update(received_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    assert enforce_retention() == {"raw_deleted": 1, "rollups_deleted": 1}
    assert AuditEntry.objects.filter(action="telemetry.retention", actor="system:celery:telemetry-retention").exists()


@pytest.mark.django_db(transaction=True)
def test_a_failure_of_the_live_update_after_commit_does_not_fail_the_committed_batch(monkeypatch, caplog):
    """The bridge acks a batch only when ingest returns: raising after the commit would get it redelivered
    and stored twice (seen when the database connection dropped before the rollout lookup)."""
    from django.db import OperationalError

    def lookup_fails(samples: object) -> None:
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(services, "committed_batch_offer", lookup_fails)
    device = DeviceFactory()
    assert telemetry_ingest_batch([envelope(device.uid, ts=MINUTE)]) == 1
    assert TelemetrySample.objects.filter(device=device).count() == 1
    assert "terminating connection" in caplog.text
