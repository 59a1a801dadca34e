"""The rollouts API: plans refused with the field at fault, actions answering 409 when the state forbids them,
roles, preview, and a device's version history."""

from __future__ import annotations

import pytest

from audit.actors import Actor
from deployments.models import Job, Rollout, RolloutStatus
from deployments.services.tick import rollout_advance
from models_registry.services import model_version_revoke
from tests.deployments.rollout_helpers import finish
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/rollouts/"


@pytest.fixture
def devices():
    site = SiteFactory()
    return [DeviceFactory(site=site, tags=["canary"]) for _ in range(10)] + [
        DeviceFactory(site=site, tags=["canary"], runtimes=[{"name": "tflite", "version": "2.14"}])
    ]


def body(version_id: int, **overrides: object) -> dict:
    data = {
        "version": version_id,
        "target": {"filter": {"tag": "canary"}},
        "waves": [{"percent": 10}, {"percent": 50}, {"percent": 100}],
        "install_gate": {"min_success_pct": 95, "max_failure_pct": 10, "min_finished": 1},
        "health_gate": {"max_p95_latency_ratio": 1.3, "max_error_rate": 0.02, "bake_seconds": 5, "min_samples": 10},
        "rate_per_minute": 6000,
        "job_timeout_seconds": 60,
        "seed": 1,
    }
    data.update(overrides)
    return data


def test_operator_creates_previews_and_starts_a_rollout(operator_client, published_version, devices, assert_audited):
    preview = operator_client.post(f"{URL}preview/", body(published_version.pk), format="json")
    assert preview.status_code == 200, preview.json()
    assert preview.json()["wave_sizes"] == [1, 4, 5] and preview.json()["excluded_count"] == 1
    assert not Rollout.objects.exists()
    created = operator_client.post(URL, body(published_version.pk), format="json")
    assert created.status_code == 201, created.json()
    detail = created.json()
    assert detail["status"] == "draft" and [w["size"] for w in detail["waves"]] == [1, 4, 5]
    assert (
        detail["excluded"]["count"] == 1
        and "needs runtime onnxruntime" in detail["excluded"]["devices"][0]["reasons"][0]
    )
    started = operator_client.post(f"{URL}{detail['id']}/start/", format="json")
    assert started.status_code == 200 and started.json()["status"] == "running"
    assert_audited("rollout", detail["id"], "rollout.running", actor="user:oscar-operator")
    rollout_advance(rollout_id=detail["id"])
    waves = operator_client.get(f"{URL}{detail['id']}/").json()["waves"]
    assert waves[0]["jobs"] == {"QUEUED": 1} and waves[1]["jobs"] == {"NOT_SENT": 4}
    listed = operator_client.get(URL).json()
    assert listed["count"] == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"waves": [{"percent": 50}, {"percent": 10}]}, "waves"),
        ({"waves": []}, "waves"),
        ({"install_gate": {"min_success_pct": 150}}, "install_gate.min_success_pct"),
        ({"install_gate": {"max_failure_pct": -1}}, "install_gate.max_failure_pct"),
        ({"target": {}}, "target"),
        ({"target": {"devices": []}}, "target.devices"),
        ({"target": {"filter": {"tag": "nobody-has-this"}}}, "target"),
        ({"health_gate": {"bake_seconds": 5}}, "health_gate"),
        ({"waves": [{"percent": 10, "count": 3}]}, "waves.0"),
    ],
)
def test_invalid_plans_are_refused_with_the_field(operator_client, published_version, devices, change, field):
    response = operator_client.post(URL, body(published_version.pk, **change), format="json")
    assert response.status_code == 400, response.json()
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert not Rollout.objects.exists()


def test_a_revoked_version_is_refused(operator_client, published_version, devices):
    draft = operator_client.post(URL, body(published_version.pk), format="json").json()
    model_version_revoke(actor=Actor.system("tests"), version=published_version, reason="bad weights")
    response = operator_client.post(URL, body(published_version.pk), format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "version"
    started = operator_client.post(f"{URL}{draft['id']}/start/", format="json")
    assert started.status_code == 409 and "revoked" in started.json()["detail"]


def test_forbidden_actions_answer_409_with_the_reason(operator_client, published_version, devices):
    rollout = operator_client.post(URL, body(published_version.pk), format="json").json()
    paused = operator_client.post(f"{URL}{rollout['id']}/pause/", format="json")
    assert paused.status_code == 409 and "draft" in paused.json()["detail"]
    assert operator_client.post(f"{URL}{rollout['id']}/approve/", format="json").status_code == 409
    operator_client.post(f"{URL}{rollout['id']}/start/", format="json")
    other = operator_client.post(URL, body(published_version.pk), format="json").json()
    conflict = operator_client.post(f"{URL}{other['id']}/start/", format="json")
    assert conflict.status_code == 409 and "already in active rollouts" in conflict.json()["detail"]
    assert operator_client.post(f"{URL}{rollout['id']}/abort/", {"reason": "stop"}, format="json").status_code == 200
    assert operator_client.post(f"{URL}{rollout['id']}/resume/", format="json").status_code == 409


def test_emergency_path_is_for_admins_with_a_reason(
    operator_client, admin_client, viewer_client, published_version, devices, assert_audited
):
    rollout = operator_client.post(URL, body(published_version.pk), format="json").json()
    assert viewer_client.post(URL, body(published_version.pk), format="json").status_code == 403
    operator_client.post(f"{URL}{rollout['id']}/start/", format="json")
    url = f"{URL}{rollout['id']}/emergency/"
    assert operator_client.post(url, {"action": "skip_gates", "reason": "hotfix"}, format="json").status_code == 403
    missing = admin_client.post(url, {"action": "skip_gates"}, format="json")
    assert missing.status_code == 400 and missing.json()["errors"][0]["field"] == "reason"
    skipped = admin_client.post(url, {"action": "skip_gates", "reason": "security hotfix"}, format="json")
    assert skipped.status_code == 200 and skipped.json()["skip_gates"] is True
    assert_audited("rollout", rollout["id"], "rollout.skip_gates", actor="user:alice-admin")
    forced = admin_client.post(url, {"action": "rollback", "reason": "bricking devices"}, format="json")
    assert forced.status_code == 200 and forced.json()["status"] == RolloutStatus.ROLLING_BACK
    assert "emergency: bricking devices" in forced.json()["status_reason"]


def test_device_history_and_installed(operator_client, published_version, devices):
    rollout = operator_client.post(URL, body(published_version.pk, waves=[{"count": 1}]), format="json").json()
    operator_client.post(f"{URL}{rollout['id']}/start/", format="json")
    rollout_advance(rollout_id=rollout["id"])
    job = Job.objects.select_related("device").get(rollout_id=rollout["id"])
    finish(job)
    history = operator_client.get(f"/api/v1/devices/{job.device_id}/history/").json()["results"]
    assert history[0]["version_number"] == published_version.number and history[0]["until"] is None
    assert history[0]["rollout"] == rollout["id"] and history[0]["wave"] == 0
    assert "rollout" in history[0]["reason"]
    filtered = operator_client.get(f"/api/v1/devices/{job.device_id}/history/?version=999999").json()["results"]
    assert filtered == []
    device = operator_client.get(f"/api/v1/devices/{job.device_id}/").json()
    assert device["installed"][0]["model"] == "shape-classifier" and device["installed"][0]["version"] == 1
    listed = operator_client.get("/api/v1/devices/?tag=canary").json()["results"]
    assert sum(len(d["installed"]) for d in listed) == 1


def test_the_detail_lists_online_at_dispatch_per_wave_and_the_preview_online_now(
    operator_client, published_version, devices
):
    from fleet.models import ConnectionStatus, Device

    offline = devices[-2]  # one of the ten that can run the version
    Device.objects.filter(pk=offline.pk).update(status=ConnectionStatus.OFFLINE)
    preview = operator_client.post(f"{URL}preview/", body(published_version.pk), format="json").json()
    assert preview["wave_online"] == [1, 4, 4]  # the offline device is planned into the last wave
    created = operator_client.post(URL, body(published_version.pk, offline_devices="defer"), format="json").json()
    assert created["plan"]["offline_devices"] == "defer" and created["plan"]["queued_timeout_seconds"] == 600
    operator_client.post(f"{URL}{created['id']}/start/", format="json")
    rollout_advance(rollout_id=created["id"])
    waves = operator_client.get(f"{URL}{created['id']}/").json()["waves"]
    assert waves[0]["online_at_dispatch"] == 1 and waves[0]["offline_at_dispatch"]["deferred"] == []
    assert waves[1]["online_at_dispatch"] is None  # not dispatched yet


def test_the_detail_costs_the_same_few_queries_for_a_small_and_a_large_rollout(operator_client, published_version):
    """No N+1 and nothing proportional to the rollout: the counts come from RolloutCount rows. Token with its
    roles, rollout, waves, gate results with events (one query), counts, artifact transfers (excluded devices:
    one more)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from deployments.services.rollout_drafts import rollout_create
    from deployments.services.rollouts import rollout_start
    from tests.deployments.rollout_helpers import ACTOR

    site = SiteFactory()
    costs, sizes = [], []
    for tag, size in (("few", 3), ("many", 30)):
        for _ in range(size):
            DeviceFactory(site=site, tags=[tag])
        plan = body(published_version.pk, target={"filter": {"tag": tag}})
        del plan["version"]  # the API's field; the service takes it apart
        rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan)
        rollout_start(actor=ACTOR, rollout=rollout)
        rollout_advance(rollout_id=rollout.pk)
        for job in Job.objects.filter(rollout=rollout).select_related("device"):
            finish(job)
        rollout_advance(rollout_id=rollout.pk)
        operator_client.get(f"{URL}{rollout.pk}/")  # a token's first use in a minute records last_used_at
        with CaptureQueriesContext(connection) as queries:
            response = operator_client.get(f"{URL}{rollout.pk}/")
        assert response.status_code == 200
        detail = response.json()
        sizes.append(sum(sum(w["jobs"].values()) for w in detail["waves"]))
        assert detail["waves"][0]["jobs"] == {"SUCCEEDED": detail["waves"][0]["size"]}
        costs.append(len(queries))
    assert sizes == [3, 30]
    assert costs[0] == costs[1] <= 6, costs
