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
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_pause, rollout_start
from deployments.services.tick import rollout_advance
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
    assert rollout.plan.health_gate is not None and rollout.plan.health_gate.max_p95_latency_ratio == 1.3
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


def test_wizard_prefills_the_plan_the_api_gets_without_fields(published_version, devices, settings):
    """The wizard's pre-filled numbers are RolloutPlan's defaults: posted as shown, it plans what the API
    plans for a body with no plan fields (rate and timeout from settings included)."""
    from django.http import QueryDict

    from deployments.api.serializers import RolloutPlanSerializer
    from frontend.rollout_views import plan_payload

    settings.ROLLOUT_DEFAULT_RATE_PER_MINUTE = 120
    shown = login("operator").get("/rollouts/new/").context["v"]
    post = QueryDict(mutable=True)
    post.update(shown)
    post.update({"version": str(published_version.pk), "target_filter": "tag=canary", "health_enabled": "1"})
    body, errors = plan_payload(post)
    wizard_side = RolloutPlanSerializer(data=body)
    assert not errors and wizard_side.is_valid(), wizard_side.errors
    api_side = RolloutPlanSerializer(data={
        "version": published_version.pk, "target": {"filter": {"tag": "canary"}}, "waves": [{"percent": 100}],
        "health_gate": {"max_error_rate": 0.02},
    })  # fmt: skip
    assert api_side.is_valid(), api_side.errors
    wizard_plan, api_plan = wizard_side.to_plan()[2], api_side.to_plan()[2]
    assert wizard_plan.install_gate == api_plan.install_gate
    assert wizard_plan.rate_per_minute == api_plan.rate_per_minute == 120
    assert wizard_plan.job_timeout_seconds == api_plan.job_timeout_seconds
    assert wizard_plan.queued_timeout_seconds == api_plan.queued_timeout_seconds
    assert wizard_plan.offline_devices == api_plan.offline_devices
    assert wizard_plan.health_gate is not None and api_plan.health_gate is not None
    assert wizard_plan.health_gate.bake_seconds == api_plan.health_gate.bake_seconds
    assert wizard_plan.health_gate.min_samples == api_plan.health_gate.min_samples


def test_wizard_preview_shows_how_many_devices_of_each_wave_are_online_now(published_version):
    site = SiteFactory(name="Plant B")
    for index in range(10):  # 3 of 10 offline: the planner keeps them out of the canary
        DeviceFactory(site=site, tags=["canary"], connected=index >= 3)
    response = login("operator").post("/rollouts/new/", wizard(published_version.pk, step="preview"))
    assert response.status_code == 200, response.context.get("errors")
    assert response.context["preview"]["wave_sizes"] == [1, 4, 5]
    assert [(w["size"], w["online"]) for w in response.context["preview_waves"]] == [(1, 1), (4, 4), (5, 2)]
    html = response.content.decode()
    assert html.count('data-testid="wave-online"') == 3 and ">2 of 5<" in html


def test_wizard_has_the_health_gate_on_with_absolute_limits_and_the_offline_options(published_version, devices):
    from deployments.plan import DEFAULT_OFFLINE_DEVICES, DEFAULT_QUEUED_TIMEOUT_SECONDS, SUGGESTED_HEALTH_GATE

    operator = login("operator")
    shown = operator.get("/rollouts/new/").context["v"]
    assert shown["health_enabled"] == "1"
    assert float(shown["health_max_p95_ms"]) == SUGGESTED_HEALTH_GATE["max_p95_ms"]
    assert float(shown["health_max_error_rate"]) == SUGGESTED_HEALTH_GATE["max_error_rate"]
    assert shown["queued_timeout_seconds"] == str(DEFAULT_QUEUED_TIMEOUT_SECONDS)
    assert shown["offline_devices"] == DEFAULT_OFFLINE_DEVICES
    posted = wizard(published_version.pk, step="start", offline_devices="defer", queued_timeout_seconds="120")
    response = operator.post("/rollouts/new/", posted)
    assert response.status_code == 302
    rollout = Rollout.objects.get()
    assert rollout.plan.offline_devices == "defer" and rollout.plan.queued_timeout_seconds == 120


def test_wizard_offers_pipeline_versions_and_starts_a_pipeline_rollout(settings, tmp_path, devices, assert_audited):
    from tests.pipeline_helpers import publish_sample_pipeline

    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    pipeline_version = publish_sample_pipeline()
    client = login("operator", "olga")
    form = client.get("/rollouts/new/").content.decode()
    assert f'<option value="pipeline:{pipeline_version.pk}"' in form and "motion-then-classify v1 (pipeline)" in form
    choice = f"pipeline:{pipeline_version.pk}"
    preview = client.post("/rollouts/new/", {**wizard(0, step="preview"), "version": choice})
    assert preview.status_code == 200, preview.context.get("errors")
    assert f'value="{choice}" selected' in preview.content.decode()
    response = client.post("/rollouts/new/", {**wizard(0, step="start"), "version": choice, "health_enabled": ""})
    rollout = Rollout.objects.get()
    assert response.status_code == 302 and rollout.pipeline_version == pipeline_version and rollout.version is None
    assert_audited("rollout", rollout.pk, "rollout.create", actor="user:olga")
    unknown = client.post("/rollouts/new/", {**wizard(0, step="preview"), "version": "pipeline:999999"})
    assert unknown.status_code == 400 and "pipeline_version" in unknown.context["errors"]
