"""The topic rule: services anywhere, each device only below its own prefix."""

from __future__ import annotations

import pytest

from broker.acl import Principal, may_publish, may_receive, may_subscribe

SERVICE = Principal(username="fogdeck-bridge", kind="service")
DEV_A = Principal(username="dev-a", kind="device")
A = "fogdeck/v1/devices/dev-a"
B = "fogdeck/v1/devices/dev-b"


@pytest.mark.parametrize("topic", [f"{A}/telemetry", f"{B}/jobs/notify", "anything/else", "$SYS/broker"])
def test_service_may_publish_and_subscribe_anywhere(topic):
    assert may_publish(SERVICE, topic)
    assert may_subscribe(SERVICE, topic)
    assert may_subscribe(SERVICE, "#")
    assert may_receive(SERVICE, topic)


@pytest.mark.parametrize("topic", [f"{A}/telemetry", f"{A}/jobs/42/status", f"{A}/x"])
def test_device_may_publish_below_its_own_prefix(topic):
    assert may_publish(DEV_A, topic)


@pytest.mark.parametrize(
    "topic",
    [
        f"{B}/telemetry",  # another device
        A,  # the bare prefix is not below it
        f"{A}/",
        f"{A}x/telemetry",  # uid that merely starts with ours
        "fogdeck/v1/devices/dev-a-2/telemetry",
        "fogdeck/v1/fleet/announce",
        f"{A}/+",  # wildcards are never publish topics
        f"{A}/#",
        "",
    ],
)
def test_device_may_not_publish_outside_its_prefix(topic):
    assert not may_publish(DEV_A, topic)


@pytest.mark.parametrize("topic_filter", [f"{A}/#", f"{A}/jobs/notify", f"{A}/+/status", f"{A}/jobs/+"])
def test_device_may_subscribe_below_its_own_prefix(topic_filter):
    assert may_subscribe(DEV_A, topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+",
        "fogdeck/#",
        "fogdeck/v1/devices/#",
        "fogdeck/v1/devices/+/jobs/notify",  # wildcard at the device level
        "fogdeck/v1/+/dev-a/jobs/notify",  # wildcard above it
        f"{B}/#",
        f"{B}/jobs/notify",
        A,
        f"{A}x/#",
        "$share/g/fogdeck/v1/devices/dev-a/jobs/notify",
    ],
)
def test_device_may_not_subscribe_to_filters_reaching_other_devices(topic_filter):
    assert not may_subscribe(DEV_A, topic_filter)


def test_device_receives_only_its_own_topics():
    assert may_receive(DEV_A, f"{A}/jobs/notify")
    assert may_receive(DEV_A, A)  # `<prefix>/#` matches the bare prefix in MQTT
    assert not may_receive(DEV_A, f"{B}/jobs/notify")
    assert not may_receive(DEV_A, f"{A}x/jobs/notify")


@pytest.mark.parametrize("username", ["", "dev/a", "+", "#", "dev a"])
def test_device_whose_username_cannot_be_a_uid_gets_nothing(username):
    principal = Principal(username=username, kind="device")
    topic = f"fogdeck/v1/devices/{username}/telemetry"

    assert not may_publish(principal, topic)
    assert not may_subscribe(principal, f"fogdeck/v1/devices/{username}/#")
    assert not may_receive(principal, topic)


def test_unknown_principal_kind_is_treated_as_nothing_allowed():
    principal = Principal(username="dev-a", kind="admin")  # type: ignore[arg-type]

    assert not may_publish(principal, f"{A}/telemetry")
    assert not may_subscribe(principal, "#")


AWS_A, AWS_B = "$aws/things/dev-a/jobs", "$aws/things/dev-b/jobs"


@pytest.mark.parametrize(
    "topic", [f"{AWS_A}/get", f"{AWS_A}/start-next", f"{AWS_A}/0b0e/update", f"{AWS_A}/notify-next"]
)
def test_a_device_may_use_its_own_aws_jobs_topics(topic):
    assert may_publish(DEV_A, topic)
    assert may_subscribe(DEV_A, topic)
    assert may_receive(DEV_A, topic)


def test_a_device_may_subscribe_with_wildcards_below_its_aws_jobs_prefix():
    assert may_subscribe(DEV_A, f"{AWS_A}/+/update/accepted")
    assert may_subscribe(DEV_A, f"{AWS_A}/#")


@pytest.mark.parametrize(
    "topic",
    [
        f"{AWS_B}/get",  # another thing
        f"{AWS_B}/notify-next",
        AWS_A,  # the bare prefix
        "$aws/things/dev-a/shadow/update",  # only the jobs API
        "$aws/things/dev-a-2/jobs/get",
        "$aws/things/+/jobs/notify-next",
        "$aws/#",
    ],
)
def test_a_device_may_not_use_other_aws_topics(topic):
    assert not may_publish(DEV_A, topic)
    assert not may_subscribe(DEV_A, topic)
    if "+" not in topic and "#" not in topic and topic != AWS_A:
        assert not may_receive(DEV_A, topic)
