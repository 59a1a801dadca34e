"""The rollout pages through Django's test client: the wizard's preview and start, refused plans naming the
field, the list's filters and empty state, the detail page's actions (audited, CSRF, refused to viewers)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit.actors import Actor
from audit.models import AuditEntry
from deployments.models import GateEvaluation, Job, Rollout, RolloutStatus
from deployments.rollout_services import rollout_advance, rollout_create, rollout_pause, rollout_start
from tests.factories import DeviceFactory, SiteFactory, make_user

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def login(role: str | None, name: str | None = None, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(make_user(name or f"user-{role}", role))
    return client


@pytest.fixture
def devices():
    site = SiteFactory(name="Plant A")
    return [DeviceFactory(site=site, tags=["canary"]) for _ in range(10)] + [
        DeviceFactory(site=site, tags=["canary"], uid="edge-tflite-1", runtimes=[{"name": "tflite", "version": "2.14"}])
    ]


def wizard(version_id: int, **changes: str) -> dict[str, str]:
    data = {
        "name": "canary of v1",
        "version": str(version_id),
        "target_kind": "filter",
        "target_filter": "tag=canary",
        "wave0_amount": "10",
        "wave0_unit": "percent",
        "wave1_amount": "50",
        "wave1_unit": "percent",
        "wave2_amount": "100",
        "wave2_unit": "percent",
        "install_min_success_pct": "95",
        "install_max_failure_pct": "10",
        "install_min_finished": "1",
        "health_enabled": "1",
        "health_max_p95_latency_ratio": "1.3",
        "health_max_error_rate": "0.02",
        "health_min_samples": "10",
        "health_bake_seconds": "30",
        "approval_before_wave": "1",
        "rate_per_minute": "600",
        "seed": "7",
    }
    data.update(changes)
    return data


def plan(version_id: int) -> dict:
    return {
        "target": {"filter": {"tag": "canary"}},
        "waves": [{"percent": 10}, {"percent": 100}],
        "install_gate": {"min_success_pct": 95, "max_failure_pct": 10, "min_finished": 1},
        "rate_per_minute": 6000,
    }


def test_wizard_previews_waves_and_excluded_devices_without_writing(published_version, devices):
    response = login("operator").post("/rollouts/new/", wizard(published_version.pk, step="preview"))
    assert response.status_code == 200
    preview = response.context["preview"]
    assert preview["wave_sizes"] == [1, 4, 5] and preview["excluded_count"] == 1
    assert "edge-tflite-1" in response.content.decode()
    assert "needs runtime onnxruntime" in next(iter(preview["excluded_reasons"]))
    assert b'data-testid="start-button"' in response.content
    assert not Rollout.objects.exists() and not AuditEntry.objects.filter(object_type="rollout").exists()


def test_wizard_creates_and_starts_the_previewed_plan_audited(published_version, devices, assert_audited):
    client = login("operator", "olga")
    response = client.post("/rollouts/new/", wizard(published_version.pk, step="start"))
    rollout = Rollout.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/rollouts/{rollout.pk}/"
    assert rollout.status == RolloutStatus.RUNNING and rollout.seed == 7
    assert [w.size for w in rollout.waves.order_by("index")] == [1, 4, 5]
    assert [w.requires_approval for w in rollout.waves.order_by("index")] == [False, True, False]
    assert rollout.plan["health_gate"]["max_p95_latency_ratio"] == 1.3
    assert_audited("rollout", rollout.pk, "rollout.create", actor="user:olga")
    assert_audited("rollout", rollout.pk, "rollout.running", actor="user:olga")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"wave0_amount": "60", "wave1_amount": "10"}, "waves"),
        ({"install_min_success_pct": "150"}, "install_gate.min_success_pct"),
        ({"health_max_p95_latency_ratio": "", "health_max_error_rate": ""}, "health_gate"),
        ({"target_filter": "tag=nobody-has-this"}, "target"),
        ({"target_kind": "devices", "target_devices": "edge-nope-1"}, "target.devices"),
        ({"version": ""}, "version"),
        ({"wave0_amount": "ten"}, "waves.0"),
    ],
)
def test_wizard_refuses_bad_plans_naming_the_field(published_version, devices, changes, field):
    response = login("operator").post("/rollouts/new/", wizard(published_version.pk, step="start", **changes))
    assert response.status_code == 400
    assert field in response.context["errors"], response.context["errors"]
    assert f"<code>{field}</code>" in response.content.decode()
    assert not Rollout.objects.exists()


def test_a_refused_start_leaves_no_draft_behind(published_version, devices):
    first = rollout_create(actor=ACTOR, version=published_version, plan=plan(published_version.pk))
    rollout_start(actor=ACTOR, rollout=first)
    response = login("operator").post("/rollouts/new/", wizard(published_version.pk, step="start"))
    assert response.status_code == 400 and "already in active rollouts" in response.context["errors"]["target"]
    assert Rollout.objects.count() == 1


def test_viewers_get_403_from_the_wizard_and_see_no_links_or_buttons(published_version, devices):
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan(published_version.pk))
    rollout_start(actor=ACTOR, rollout=rollout)
    viewer = login("viewer", csrf=True)
    assert viewer.get("/rollouts/new/").status_code == 403
    assert viewer.post("/rollouts/new/", wizard(published_version.pk, step="start")).status_code == 403
    listing = viewer.get("/rollouts/").content.decode()
    assert 'data-testid="new-rollout"' not in listing and f"/rollouts/{rollout.pk}/" in listing
    detail = viewer.get(f"/rollouts/{rollout.pk}/")
    assert detail.status_code == 200 and b'data-testid="rollout-actions"' not in detail.content
    token = viewer.get("/rollouts/").cookies.get("csrftoken") or viewer.cookies["csrftoken"]
    refused = viewer.post(f"/rollouts/{rollout.pk}/pause/", {"csrfmiddlewaretoken": token.value})
    assert refused.status_code == 403
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_operator_pauses_and_resumes_from_the_page_audited(published_version, devices, assert_audited):
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan(published_version.pk))
    rollout_start(actor=ACTOR, rollout=rollout)
    client = login("operator", "olga")
    page = client.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert 'data-testid="action-pause"' in page and 'data-testid="action-resume"' not in page
    response = client.post(f"/rollouts/{rollout.pk}/pause/", {"reason": "looking at p95"})
    assert response.status_code == 302
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED and rollout.status_reason == "looking at p95"
    assert_audited("rollout", rollout.pk, "rollout.paused", actor="user:olga")
    page = client.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert 'data-testid="action-resume"' in page and 'data-testid="action-pause"' not in page
    client.post(f"/rollouts/{rollout.pk}/resume/")
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_a_forbidden_action_is_refused_with_the_reason_and_changes_nothing(published_version, devices):
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan(published_version.pk))
    client = login("operator")
    response = client.post(f"/rollouts/{rollout.pk}/pause/", follow=True)
    assert "cannot become paused" in response.content.decode()
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.DRAFT
    assert client.post(f"/rollouts/{rollout.pk}/explode/").status_code == 404


def test_actions_need_the_csrf_token(published_version, devices):
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan(published_version.pk))
    rollout_start(actor=ACTOR, rollout=rollout)
    assert login("operator", csrf=True).post(f"/rollouts/{rollout.pk}/pause/").status_code == 403
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_approve_shows_for_a_wave_awaiting_approval_and_lets_it_install(published_version, devices):
    body = {**plan(published_version.pk), "waves": [{"percent": 10, "approval": True}, {"percent": 100}]}
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=body)
    rollout_start(actor=ACTOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    client = login("operator")
    assert b'data-testid="action-approve"' in client.get(f"/rollouts/{rollout.pk}/").content
    client.post(f"/rollouts/{rollout.pk}/approve/", {"reason": "go"})
    assert rollout.waves.get(index=0).status == "installing"
    assert GateEvaluation.objects.filter(rollout=rollout, gate="approval", verdict="pass").exists()


def test_list_filters_by_status_and_shows_an_empty_state(published_version, devices):
    running = rollout_create(actor=ACTOR, version=published_version, plan=plan(published_version.pk), name="one")
    rollout_start(actor=ACTOR, rollout=running)
    rollout_pause(actor=ACTOR, rollout=running)
    client = login("viewer")
    assert b"No rollouts yet" not in client.get("/rollouts/").content
    paused = client.get("/rollouts/?status=paused")
    assert [r.pk for r in paused.context["page"].object_list] == [running.pk]
    assert paused.context["page"].object_list[0].device_count == 10
    empty = client.get("/rollouts/?status=completed")
    assert not empty.context["page"].object_list and b"No rollout has these statuses" in empty.content
    Rollout.objects.all().delete()
    assert b"No rollouts yet" in client.get("/rollouts/").content


def test_overview_links_active_rollouts_and_nav_shows_rollouts(published_version, devices):
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan(published_version.pk), name="to links")
    rollout_start(actor=ACTOR, rollout=rollout)
    page = login("viewer").get("/").content.decode()
    assert f'href="/rollouts/{rollout.pk}/"' in page and 'href="/rollouts/"' in page


def test_detail_page_query_count_does_not_grow_with_the_rollout(published_version):
    site = SiteFactory()
    small = [DeviceFactory(site=site, tags=["small"]) for _ in range(3)]
    large = [DeviceFactory(site=site, tags=["large"]) for _ in range(30)]
    client = login("viewer")
    counts = []
    for tag, fleet in (("small", small), ("large", large)):
        body = {**plan(published_version.pk), "target": {"filter": {"tag": tag}}}
        rollout = rollout_create(actor=ACTOR, version=published_version, plan=body)
        rollout_start(actor=ACTOR, rollout=rollout)
        rollout_advance(rollout_id=rollout.pk)
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/rollouts/{rollout.pk}/").status_code == 200
        counts.append(len(queries))
        assert len(fleet) > 0
    assert counts[0] == counts[1], counts


def test_detail_page_shows_where_artifacts_came_from_and_overview_shows_the_drift_panel(published_version, devices):
    from fleet.models import ArtifactTransfer

    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan(published_version.pk))
    rollout_start(actor=ACTOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    job = Job.objects.filter(rollout_id=rollout.pk).select_related("device").first()
    ArtifactTransfer.objects.create(
        job_id=job.pk, rollout_id=rollout.pk, device=job.device, sha256=published_version.sha256,
        source="cloud", size=published_version.size, refused=[],
    )  # fmt: skip
    viewer = login("viewer")
    page = viewer.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert 'data-testid="artifact-transfer"' in page and 'data-testid="transfer-cloud"' in page
    assert 'data-testid="drift-alerts"' in viewer.get("/").content.decode()
