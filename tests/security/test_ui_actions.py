"""Every action of the operator UI (the frontend's POST views) for anonymous, viewer, operator and admin."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, get_resolver

from audit.models import AuditEntry
from fleet.models import DeviceTag
from models_registry.models import ModelVersion
from tests.factories import DeviceFactory, make_user

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Action:
    """A UI action: how to post it, and whether it changed anything (an audit entry is the proof)."""

    route: str
    post: Callable[[Client, Any], Any]
    changed: Callable[[Any], bool]
    min_role: str = "operator"  # "admin" for what only admins may do
    ok_status: int = 302  # a redirect after the change, or 200 where the page shows a secret once


def _tag(client: Client, ctx: Any) -> Any:
    return client.post("/devices/bulk/", {"action": "tag", "tag": "matrix", "devices": [ctx["device"].pk]})


def _tagged(ctx: Any) -> bool:
    tagged = DeviceTag.objects.filter(device=ctx["device"], tag="matrix").exists()
    audited = AuditEntry.objects.for_object("device", ctx["device"].pk).filter(action="device.update").exists()
    assert tagged == audited, "a UI change without its audit entry (or the reverse)"
    return tagged


def _upload(client: Client, ctx: Any) -> Any:
    from models_registry.samples import sample_versions

    artifact = io.BytesIO(sample_versions()[1].onnx_bytes)
    artifact.name = "v2.onnx"
    body = {"artifact": artifact, "format": "onnx", "framework": "other", "label": "m", "runtime": "onnxruntime"}
    return client.post(f"/models/{ctx['model'].pk}/versions/", body)


def _uploaded(ctx: Any) -> bool:
    version = ModelVersion.objects.filter(model=ctx["model"], number=2).first()
    if version is None:
        return False
    assert AuditEntry.objects.for_object("model_version", version.pk).filter(action="model_version.create").exists()
    return True


def _pause(client: Client, ctx: Any) -> Any:
    return client.post(f"/rollouts/{ctx['rollout'].pk}/pause/", {"reason": "matrix"})


def _paused(ctx: Any) -> bool:
    from deployments.models import Rollout

    paused = Rollout.objects.get(pk=ctx["rollout"].pk).status == "paused"
    audited = AuditEntry.objects.for_object("rollout", ctx["rollout"].pk).filter(action="rollout.paused").exists()
    assert paused == audited, "a UI change without its audit entry (or the reverse)"
    return paused


def _toggle_hook(client: Client, ctx: Any) -> Any:
    return client.post(f"/webhooks/{ctx['hook'].pk}/toggle/")


def _hook_toggled(ctx: Any) -> bool:
    from webhooks.models import WebhookSubscription

    toggled = not WebhookSubscription.objects.get(pk=ctx["hook"].pk).active
    audited = AuditEntry.objects.for_object("webhook", ctx["hook"].pk).filter(action="webhook.update").exists()
    assert toggled == audited, "a UI change without its audit entry (or the reverse)"
    return toggled


def _create_hook(client: Client, ctx: Any) -> Any:
    body = {"name": "matrix-hook", "url": "https://hooks.example.com/x", "event_kinds": ["rollout.gate_failed"]}
    return client.post("/webhooks/", body)


def _hook_created(ctx: Any) -> bool:
    from webhooks.models import WebhookSubscription

    created = WebhookSubscription.objects.filter(name="matrix-hook").first()
    if created is None:
        return False
    assert AuditEntry.objects.for_object("webhook", created.pk).filter(action="webhook.create").exists()
    return True


ACTIONS = {
    "device-bulk": Action("device-bulk", _tag, _tagged),
    "rollout-action": Action("rollout-action", _pause, _paused),
    "webhook-action": Action("webhook-action", _toggle_hook, _hook_toggled, min_role="admin"),
    "webhooks-page": Action("webhooks-page", _create_hook, _hook_created, min_role="admin", ok_status=200),
    "model-version-upload": Action("model-version-upload", _upload, _uploaded),
}


def frontend_routes() -> dict[str, list[str]]:
    """Every named frontend route and the parameters its path takes."""
    resolver = get_resolver("frontend.urls")
    return {p.name: list(p.pattern.converters) for p in resolver.url_patterns if isinstance(p, URLPattern) and p.name}


@pytest.fixture
def ctx(published_version: Any) -> dict[str, Any]:
    from audit.actors import Actor
    from deployments.rollout_services import rollout_create, rollout_start
    from webhooks.services import webhook_create

    system = Actor.system("tests")
    device = DeviceFactory()
    plan = {"target": {"devices": [device.pk]}, "waves": [{"percent": 100}], "seed": 1}
    rollout = rollout_create(actor=system, version=published_version, plan=plan)
    rollout_start(actor=system, rollout=rollout)
    hook = webhook_create(
        actor=system, name="existing", url="https://hooks.example.com/y", event_kinds=["drift.alert"]
    ).subscription
    return {"device": device, "model": published_version.model, "rollout": rollout, "hook": hook}


def client_for(role: str | None) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(make_user(f"ui-{role}", role))
    return client


def test_the_matrix_covers_every_post_only_ui_route(ctx):
    from django.urls import reverse

    admin = client_for("admin")
    ids = {
        "model_id": ctx["model"].pk,
        "device_id": ctx["device"].pk,
        "rollout_id": ctx["rollout"].pk,
        "subscription_id": ctx["hook"].pk,
        "pipeline_id": 1,
        "verb": "pause",
    }
    post_only = set()
    for name, params in frontend_routes().items():
        if admin.get(reverse(name, kwargs={p: ids[p] for p in params})).status_code == 405:
            post_only.add(name)
    # logout is POST-only too, but changes nothing of Fogdeck's: it only ends the session. ACTIONS also
    # holds forms posted to pages that answer GET (webhooks-page).
    assert post_only - {"logout"} <= set(ACTIONS)
    assert set(ACTIONS) - post_only == {"webhooks-page"}


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_anonymous_is_sent_to_login_and_nothing_changes(ctx, name):
    response = ACTIONS[name].post(client_for("anonymous"), ctx)
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert not ACTIONS[name].changed(ctx)


@pytest.mark.parametrize("role", [None, "viewer"])
@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_viewer_and_user_without_a_role_are_forbidden_and_nothing_changes(ctx, name, role):
    assert ACTIONS[name].post(client_for(role), ctx).status_code == 403
    assert not ACTIONS[name].changed(ctx)


@pytest.mark.parametrize("role", ["operator", "admin"])
@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_operator_and_admin_act_and_it_is_audited(ctx, name, role):
    action = ACTIONS[name]
    if action.min_role == "admin" and role == "operator":
        assert action.post(client_for(role), ctx).status_code == 403
        assert not action.changed(ctx)
        return
    assert action.post(client_for(role), ctx).status_code == action.ok_status
    assert action.changed(ctx)
