"""How a rollout row is locked (services/rollout_state.rollouts_locked): a tick holding its rollout must not
block the rows that reference the rollout (its counts, written by the bridges for every batch of job
updates), or a bridge waits for the tick while holding what the tick needs next and PostgreSQL fails one
of them on a deadlock (60 failed ticks in a 10,000-device fan-out before)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from audit.actors import Actor
from deployments.models import CountKind, RolloutCount
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollout_state import rollouts_locked
from tests.factories import DeviceFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres_only(
        reason="PostgreSQL's row locks: their modes (FOR NO KEY UPDATE, a foreign key's FOR KEY SHARE) and waits"
    ),
]


def test_a_locked_rollout_still_takes_rows_that_reference_it(published_version):
    DeviceFactory(tags=["locked"])
    rollout = rollout_create(
        actor=Actor.system("tests"), version=published_version,
        plan={"target": {"filter": {"tag": "locked"}}, "waves": [{"percent": 100}]},
    )  # fmt: skip
    wave_id = rollout.waves.get().pk
    held, release = threading.Event(), threading.Event()

    def tick_holding_the_rollout() -> None:
        try:
            with transaction.atomic():
                assert rollouts_locked(skip_locked=True).filter(pk=rollout.pk).first() is not None
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=tick_holding_the_rollout)
    holder.start()
    try:
        assert held.wait(10)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")  # a wait would fail the insert, not hang
            RolloutCount.objects.create(rollout_id=rollout.pk, wave_id=wave_id, kind=CountKind.JOBS, state="x", delta=0)
        # a second tick skips the rollout the first one holds, instead of waiting for it
        with transaction.atomic():
            assert rollouts_locked(skip_locked=True).filter(pk=rollout.pk).first() is None
    finally:
        release.set()
        holder.join(10)
    assert RolloutCount.objects.filter(rollout_id=rollout.pk, state="x").exists()


def test_a_bridge_batch_locks_its_devices_first_so_another_batch_waits_instead_of_deadlocking():
    """`devices_lock` takes a batch's device rows in one ordered statement before the batch's services
    lock jobs and devices one kind after another: a second batch over the same devices waits at its start
    (here: runs into its lock timeout) rather than taking half of them first."""
    from django.db import OperationalError

    from fleet.services import devices_lock

    first, second = DeviceFactory(), DeviceFactory()
    held, release = threading.Event(), threading.Event()

    def batch_holding_both() -> None:
        try:
            with transaction.atomic():
                devices_lock(uids=[second.uid, first.uid])
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=batch_holding_both)
    holder.start()
    try:
        assert held.wait(10)
        with pytest.raises(OperationalError, match="lock timeout"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '500ms'")
            devices_lock(uids=[first.uid])
    finally:
        release.set()
        holder.join(10)
    with transaction.atomic():
        devices_lock(uids=[first.uid, second.uid])  # free again
