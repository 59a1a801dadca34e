"""Domain events reach webhooks: rollout transitions (deployments) and offline storms (fleet)."""

from __future__ import annotations

import pytest

from audit.actors import Actor
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_abort, rollout_start
from fleet.services import device_mark_seen, devices_mark_stale_offline
from fleet.storms import offline_storm_check
from tests.factories import DeviceFactory, SiteFactory
from webhooks.models import WebhookDelivery
from webhooks.services import webhook_create

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def test_a_rollout_state_change_produces_a_delivery(
    published_version, receiver, eager_celery, django_capture_on_commit_callbacks
):
    webhook_create(
        actor=ACTOR, name="rollouts", url=receiver.url, event_kinds=["rollout.state_changed", "rollout.rolled_back"]
    )
    site = SiteFactory()
    for _ in range(2):
        DeviceFactory(site=site, tags=["hooked"])
    plan = {
        "target": {"filter": {"tag": "hooked"}},
        "waves": [{"percent": 100}],
        "install_gate": {"min_success_pct": 50, "max_failure_pct": 50, "min_finished": 1},
        "health_gate": {"max_p95_latency_ratio": 2, "max_error_rate": 0.5, "bake_seconds": 1, "min_samples": 1},
        "job_timeout_seconds": 60,
    }
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan)
    with django_capture_on_commit_callbacks(execute=True):
        rollout_start(actor=ACTOR, rollout=rollout)
    with django_capture_on_commit_callbacks(execute=True):
        rollout_abort(actor=ACTOR, rollout=rollout, reason="changed our mind")
    documents = [r.document for r in receiver.received]
    assert [(d["kind"], d["data"]["from_status"], d["data"]["to_status"]) for d in documents] == [
        ("rollout.state_changed", "draft", "running"),
        ("rollout.state_changed", "running", "aborted"),
    ]
    last = documents[-1]["data"]
    assert last["rollout"] == rollout.pk and last["reason"] == "changed our mind"
    assert last["model"] == published_version.model.name and last["version"] == published_version.number
    assert last["actor"] == "system:tests"
    assert WebhookDelivery.objects.filter(status="succeeded").count() == 2


def test_many_devices_going_offline_raise_one_offline_storm(
    settings, receiver, eager_celery, django_capture_on_commit_callbacks
):
    settings.OFFLINE_STORM_THRESHOLD = 3
    settings.OFFLINE_STORM_WINDOW_SECONDS = 60
    webhook_create(actor=ACTOR, name="noc", url=receiver.url, event_kinds=["fleet.offline_storm"])
    site = SiteFactory()
    devices = [DeviceFactory(site=site) for _ in range(5)]
    for device in devices:
        device_mark_seen(actor=ACTOR, uid=device.uid, online=True)
    for device in devices[:2]:
        with django_capture_on_commit_callbacks(execute=True):
            device_mark_seen(actor=ACTOR, uid=device.uid, online=False)
    assert receiver.received == []  # two are not a storm
    for device in devices[2:]:
        with django_capture_on_commit_callbacks(execute=True):
            device_mark_seen(actor=ACTOR, uid=device.uid, online=False)
    assert len(receiver.received) == 1  # one alert per storm, not one per device past the threshold
    data = receiver.received[0].document["data"]
    assert data["devices_offline"] == 3 and data["window_seconds"] == 60 and data["threshold"] == 3


def test_the_stale_sweep_counts_towards_a_storm(settings, django_capture_on_commit_callbacks):
    import datetime as dt

    from django.utils import timezone

    from core.events import domain_event

    settings.OFFLINE_STORM_THRESHOLD = 2
    seen: list[dict] = []

    def listen(sender: str, payload: dict, **_: object) -> None:
        if sender == "fleet.offline_storm":
            seen.append(payload)

    domain_event.connect(listen, dispatch_uid="test-storm")
    try:
        site = SiteFactory()
        long_ago = timezone.now() - dt.timedelta(hours=1)
        for _ in range(2):
            device = DeviceFactory(site=site)
            device_mark_seen(actor=ACTOR, uid=device.uid, online=True, at=long_ago)
        with django_capture_on_commit_callbacks(execute=True):
            assert len(devices_mark_stale_offline(actor=ACTOR)) == 2
    finally:
        domain_event.disconnect(dispatch_uid="test-storm")
    assert len(seen) == 1 and seen[0]["devices_offline"] == 2


def test_storm_window_slides(settings):
    settings.OFFLINE_STORM_THRESHOLD = 10
    settings.OFFLINE_STORM_WINDOW_SECONDS = 60
    start = 6_000_000.0  # the start of a bucket
    assert not offline_storm_check(count=8, now=start + 50)
    # 90 s after the burst began only a sixth of the previous bucket still counts: 8 * 1/6 + 3 < 10
    assert not offline_storm_check(count=3, now=start + 110)
    # but shortly after the bucket boundary most of it does: 8 * 0.9 + 3 + 1 >= 10
    assert offline_storm_check(count=1, now=start + 66)


def test_a_failed_install_gate_produces_gate_failed_and_state_changed_deliveries(
    published_version, receiver, eager_celery, django_capture_on_commit_callbacks
):
    from deployments.models import Job, JobKind, JobStatus
    from deployments.services.tick import rollout_advance
    from tests.deployments.rollout_helpers import finish

    webhook_create(actor=ACTOR, name="gates", url=receiver.url, event_kinds=["rollout.gate_failed"])
    site = SiteFactory()
    for _ in range(4):
        DeviceFactory(site=site, tags=["gated"])
    plan = {
        "target": {"filter": {"tag": "gated"}},
        "waves": [{"percent": 100}],
        "install_gate": {"min_success_pct": 90, "max_failure_pct": 10, "min_finished": 2},
        "health_gate": {"max_p95_latency_ratio": 2, "max_error_rate": 0.5, "bake_seconds": 1, "min_samples": 1},
        "rate_per_minute": 6000,
        "job_timeout_seconds": 60,
    }
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan)
    rollout_start(actor=ACTOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    for job in list(Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL).select_related("device"))[:2]:
        finish(job, JobStatus.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        rollout_advance(rollout_id=rollout.pk)
    assert [r.document["kind"] for r in receiver.received] == ["rollout.gate_failed"]
    data = receiver.received[0].document["data"]
    assert data["rollout"] == rollout.pk and data["gate"] == "install" and data["action"] == "abort"
    assert data["wave"] == 0 and data["reason"]
