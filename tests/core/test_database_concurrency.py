"""Concurrent writers on one database, as the embedded default has them: the bridge's telemetry writer
threads, the Celery worker and the web server are separate threads and processes on one SQLite file. None
of them may fail with "database is locked", and no write may be lost (settings: WAL, a busy timeout,
IMMEDIATE transactions). The same holds on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import textwrap
import threading

import pytest

from audit.services import audit_verify_chain
from fleet.models import Device
from telemetry.models import TelemetrySample
from tests.factories import DeviceFactory
from tests.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

PROCESSES = 3
THREADS = 3
ROUNDS = 30

# One writer: per round a telemetry batch (raw rows and the shared rollup row every writer upserts), an
# audited status change (reads the audit chain's head, then appends) and a read of the fleet, each in its
# own transaction, like the bridge's batches and the pages that read meanwhile.
WRITER = textwrap.dedent(
    """
    import datetime as dt
    from django.db import connection
    from fleet.models import Device
    from fleet.services import devices_mark_seen_many
    from telemetry.services import telemetry_ingest_batch
    from tests.telemetry.helpers import envelope

    def write(uid, rounds):
        start = dt.datetime.now(dt.UTC)
        try:
            for n in range(rounds):
                telemetry_ingest_batch([envelope(uid, ts=start + dt.timedelta(milliseconds=n))])
                devices_mark_seen_many(reports=[(uid, n % 2 == 0)])
                Device.objects.filter(status="online").count()
        finally:
            connection.close()
    """
)


def _run_writer_process(processes, name: str, uid: str):  # type: ignore[no-untyped-def]
    code = (
        "import django, os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings')\ndjango.setup()\n"
        + WRITER
        + f"\nwrite({uid!r}, {ROUNDS})\nprint('writer done')\n"
    )
    return processes(name, "-c", code)


def test_concurrent_writer_processes_and_threads_are_never_refused_and_lose_nothing(processes):
    devices = [DeviceFactory(status="offline") for _ in range(PROCESSES + THREADS)]
    started = dt.datetime.now(dt.UTC)
    procs = [_run_writer_process(processes, f"writer-{i}", devices[i].uid) for i in range(PROCESSES)]
    namespace: dict[str, object] = {}
    exec(WRITER, namespace)  # noqa: S102 - the same writer, on threads of this process
    errors: list[BaseException] = []

    def thread_writer(uid: str) -> None:
        try:
            namespace["write"](uid, ROUNDS)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(d.uid,)) for d in devices[PROCESSES:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    wait_until(lambda: all(p.process is None or p.process.poll() is not None for p in procs), 120, "writers done")
    outputs = [p.output() for p in procs]
    assert not errors, errors
    for output in outputs:
        assert "database is locked" not in output and "writer done" in output, output[-3000:]
    stored = TelemetrySample.objects.filter(device__in=devices, received_at__gte=started - dt.timedelta(minutes=1))
    assert stored.count() == len(devices) * ROUNDS  # nothing lost
    assert audit_verify_chain().ok  # appends from every writer formed one unbroken chain
    assert Device.objects.filter(pk__in=[d.pk for d in devices], status="offline").count() == len(devices)
