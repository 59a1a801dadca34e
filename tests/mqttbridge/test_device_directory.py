"""The bridge's device directory: one query per refresh for every device it has seen, never a stale verdict
on a device's first message."""

from __future__ import annotations

import pytest

from audit.actors import Actor
from fleet.services import device_revoke
from mqttbridge import runtime
from mqttbridge.runtime import DeviceDirectory, Rejected
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(runtime.time, "monotonic", fake)
    return fake


def test_known_devices_cost_one_query_per_refresh_not_one_per_device(clock, django_assert_num_queries):
    devices = [DeviceFactory.create() for _ in range(5)]
    directory = DeviceDirectory()
    with django_assert_num_queries(5):  # each device's first message is looked up on its own
        for device in devices:
            directory.check(device.uid)
    clock.now += runtime.DEVICE_CACHE_SECONDS + 1  # every entry is now older than the cache allows
    with django_assert_num_queries(1):
        for _ in range(3):
            for device in devices:
                directory.check(device.uid)


def test_a_revocation_is_seen_at_the_next_refresh_and_a_first_message_is_never_judged_stale(clock):
    seen, unseen = DeviceFactory.create(), DeviceFactory.create()
    directory = DeviceDirectory()
    directory.check(seen.uid)
    device_revoke(actor=Actor.system("tests"), device=seen)
    device_revoke(actor=Actor.system("tests"), device=unseen)
    with pytest.raises(Rejected) as first:
        directory.check(unseen.uid)  # never seen before: read now, so refused at once
    assert first.value.reason == "revoked_device"
    directory.check(seen.uid)  # within DEVICE_CACHE_SECONDS the earlier answer stands
    clock.now += runtime.DEVICE_CACHE_SECONDS + 1
    with pytest.raises(Rejected) as later:
        directory.check(seen.uid)
    assert later.value.reason == "revoked_device"
    with pytest.raises(Rejected) as unknown:
        directory.check("no-such-device")
    assert unknown.value.reason == "unknown_device"


def test_a_batch_of_device_messages_looks_its_new_senders_up_in_one_query(monkeypatch):
    """Shared subscriptions show every device to every bridge: its first messages must not cost one
    directory query each (a tenth of a bridge in a 10,000-device rollout)."""
    import json

    from django.utils import timezone

    from deployments import bridge_handlers
    from fleet.models import Device
    from mqttbridge.runtime import Bridge, Incoming

    devices = [DeviceFactory.create() for _ in range(6)]
    revoked = devices.pop()
    device_revoke(actor=Actor.system("tests"), device=revoked)
    bridge = Bridge(client_id="fogdeck-bridge-directory-test", **bridge_handlers.HANDLERS)
    status = json.dumps(
        {"schema_version": 1, "state": "online", "agent_version": "1", "ts": timezone.now().isoformat()}
    )
    for uid in [d.uid for d in devices] + [revoked.uid, "no-such-device"]:
        bridge.handle(Incoming(topic=f"fogdeck/v1/devices/{uid}/status", payload=status.encode(), mid=0, qos=0))
    lookups: list[list[str]] = []
    load = DeviceDirectory._load
    monkeypatch.setattr(DeviceDirectory, "_load", lambda self, uids: (lookups.append(uids), load(self, uids))[1])
    bridge.flush_device_messages()
    assert len(lookups) == 1 and len(lookups[0]) == 7, lookups  # REFRESH_CHUNK uids per query
    assert set(Device.objects.filter(status="online").values_list("uid", flat=True)) == {d.uid for d in devices}
    assert bridge.stats.rejected == {"revoked_device": 1, "unknown_device": 1}
    assert bridge.stats.applied["status"] == 5


def test_a_reconciliation_the_database_refused_is_kept_for_the_next_turn():
    """A database error while applying the results states list: nothing is lost, the states wait for the
    next turn (the bridge's loop reconnects and calls again), then they are applied and answered."""
    import json
    import uuid

    from django.db import OperationalError
    from django.utils import timezone

    from deployments import bridge_handlers
    from mqttbridge.runtime import Bridge
    from protocol.messages import parse_state

    job_id = str(uuid.uuid4())
    state = parse_state(json.dumps({
        "schema_version": 1, "ts": timezone.now().isoformat(), "agent_version": "1.0",
        "hardware": {"arch": "x86_64", "cpu": "test", "memory_mb": 2048, "accelerator": "none"},
        "runtimes": [], "slots": {"a": None, "b": None}, "active": {},
        "recent_jobs": [{"job_id": job_id, "status": "SUCCEEDED", "seq": 3}],
    }).encode())  # fmt: skip
    calls: list[list[str]] = []

    def refused(reports, bridge):
        calls.append([uid for uid, _ in reports])
        raise OperationalError("the database went away")

    handlers = {**bridge_handlers.HANDLERS, "state_results": refused}
    bridge = Bridge(client_id="fogdeck-bridge-reconcile-test", reconcile_delay_seconds=1.0, **handlers)
    bridge._reconcile["dev-a"] = (10.0, state)
    bridge.reconcile_due_states(now=5.0)  # not due yet
    assert calls == []
    with pytest.raises(OperationalError):
        bridge.reconcile_due_states(now=11.0)
    assert calls == [["dev-a"]] and bridge._reconcile["dev-a"][1] is state  # kept
    applied: list[list[str]] = []
    bridge._state_results = lambda reports, _bridge: applied.append([uid for uid, _ in reports])
    bridge.reconcile_due_states(now=12.0)
    assert applied == [["dev-a"]] and bridge._reconcile == {}
