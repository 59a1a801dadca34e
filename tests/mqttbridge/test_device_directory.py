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
