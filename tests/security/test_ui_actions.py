"""Every action of the operator UI (the frontend's POST views) for anonymous, viewer, operator and admin."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, get_resolver

from audit.actors import Actor
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


def _save_group(client: Client, ctx: Any) -> Any:
    return client.post("/devices/save-group/", {"name": "matrix-group", "query": "tier=edge"})


def _group_saved(ctx: Any) -> bool:
    from fleet.models import DeviceGroup

    group = DeviceGroup.objects.filter(name="matrix-group").first()
    if group is None:
        return False
    assert AuditEntry.objects.filter(action="group.create", object_id=str(group.pk)).exists()
    return True


def _alias(client: Client, ctx: Any) -> Any:
    return client.post(f"/models/{ctx['model'].pk}/versions/1/alias-set/", {"alias": "matrix"})


def _aliased(ctx: Any) -> bool:
    from models_registry.models import Alias

    aliased = Alias.objects.filter(model=ctx["model"], name="matrix").exists()
    audited = AuditEntry.objects.for_object("model", ctx["model"].pk).filter(action="model.alias_set").exists()
    assert aliased == audited, "a UI change without its audit entry (or the reverse)"
    return aliased


ACTIONS = {
    "device-bulk": Action("device-bulk", _tag, _tagged, min_role="admin"),
    "device-save-group": Action("device-save-group", _save_group, _group_saved, min_role="admin"),
    "model-version-action": Action("model-version-action", _alias, _aliased),
    "rollout-action": Action("rollout-action", _pause, _paused),
    "webhook-action": Action("webhook-action", _toggle_hook, _hook_toggled, min_role="admin"),
    "webhooks-page": Action("webhooks-page", _create_hook, _hook_created, min_role="admin", ok_status=200),
    "model-version-upload": Action("model-version-upload", _upload, _uploaded, min_role="admin"),
}


def frontend_routes() -> dict[str, list[str]]:
    """Every named frontend route and the parameters its path takes."""
    resolver = get_resolver("frontend.urls")
    return {p.name: list(p.pattern.converters) for p in resolver.url_patterns if isinstance(p, URLPattern) and p.name}


@pytest.fixture
def ctx(published_version: Any) -> dict[str, Any]:
    from audit.actors import Actor
    from deployments.services.rollout_drafts import rollout_create
    from deployments.services.rollouts import rollout_start
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
        "number": 1,
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


# --- the UI asks for the role the API asks for (issue 14, finding 8) -------------------------------


def _api_tag(api: Any, ctx: Any) -> Any:
    return api.patch(f"/api/v1/devices/{ctx['device'].pk}/", {"tags": ["matrix"]}, format="json")


def _ui_group(client: Client, ctx: Any) -> Any:
    return client.post("/devices/bulk/", {"action": "group", "group": ctx["group"].pk, "devices": [ctx["device"].pk]})


def _api_group(api: Any, ctx: Any) -> Any:
    return api.post(f"/api/v1/groups/{ctx['group'].pk}/members/", {"devices": [ctx["device"].pk]}, format="json")


def _api_upload(api: Any, ctx: Any) -> Any:
    from models_registry.samples import sample_versions

    artifact = io.BytesIO(sample_versions()[1].onnx_bytes)
    artifact.name = "v2.onnx"
    body = {"artifact": artifact, "format": "onnx", "framework": "other", "label": "m"}
    return api.post(f"/api/v1/models/{ctx['model'].pk}/versions/", body, format="multipart")


def _api_pause(api: Any, ctx: Any) -> Any:
    return api.post(f"/api/v1/rollouts/{ctx['rollout'].pk}/pause/", {"reason": "matrix"}, format="json")


def _api_toggle_hook(api: Any, ctx: Any) -> Any:
    return api.patch(f"/api/v1/webhooks/{ctx['hook'].pk}/", {"active": False}, format="json")


def _api_create_hook(api: Any, ctx: Any) -> Any:
    body = {"name": "matrix-hook", "url": "https://hooks.example.com/x", "event_kinds": ["rollout.gate_failed"]}
    return api.post("/api/v1/webhooks/", body, format="json")


TWINS = {
    "tag devices": (_tag, _api_tag),
    "add devices to a group": (_ui_group, _api_group),
    "upload a version": (_upload, _api_upload),
    "pause a rollout": (_pause, _api_pause),
    "pause a webhook": (_toggle_hook, _api_toggle_hook),
    "create a webhook": (_create_hook, _api_create_hook),
}


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
@pytest.mark.parametrize("name", sorted(TWINS))
def test_the_ui_allows_a_role_exactly_what_the_api_allows_it(ctx, request, name, role):
    from fleet.services import group_create

    ctx["group"] = group_create(actor=Actor.system("tests"), name="matrix-group")
    api = request.getfixturevalue(f"{role}_client")
    ui = Client()
    ui.force_login(api.user)
    ui_answer, api_answer = TWINS[name][0](ui, ctx).status_code, TWINS[name][1](api, ctx).status_code
    assert (ui_answer == 403) == (api_answer == 403), (ui_answer, api_answer)


def test_an_operator_upload_is_refused_before_the_body_is_read(ctx, monkeypatch):
    from models_registry.uploads import ArtifactUploadHandler

    chunks: list[int] = []
    original = ArtifactUploadHandler.receive_data_chunk
    monkeypatch.setattr(
        ArtifactUploadHandler,
        "receive_data_chunk",
        lambda self, raw, start: chunks.append(len(raw)) or original(self, raw, start),
    )
    assert _upload(client_for("operator"), ctx).status_code == 403
    assert chunks == []
    assert _upload(client_for("admin"), ctx).status_code == 302
    assert chunks, "the UI upload is streamed through the API's ArtifactUploadHandler"
    assert _uploaded(ctx)


def test_an_oversized_ui_upload_is_stopped_by_the_streaming_handler(ctx, settings, monkeypatch):
    from models_registry import uploads

    monkeypatch.setattr(uploads, "max_artifact_bytes", lambda: 1024)
    response = _upload(client_for("admin"), ctx)
    assert response.status_code == 302
    messages = [str(m) for m in response.wsgi_request._messages]
    assert any("Upload refused" in m for m in messages), messages
    assert not ModelVersion.objects.filter(model=ctx["model"], number=2).exists()


def test_the_ui_upload_is_validated_by_the_api_serializer(ctx):
    from models_registry.samples import sample_versions

    artifact = io.BytesIO(sample_versions()[1].onnx_bytes)
    artifact.name = "v2.onnx"
    body = {"artifact": artifact, "format": "onnx", "framework": "other", "runtime": "no-such-runtime"}
    response = client_for("admin").post(f"/models/{ctx['model'].pk}/versions/", body)
    messages = [str(m) for m in response.wsgi_request._messages]
    assert any("requirements.runtime" in m for m in messages), messages  # the API's field path
    assert not ModelVersion.objects.filter(model=ctx["model"], number=2).exists()


def test_an_upload_without_a_csrf_token_is_refused(ctx):
    """The upload view reads its body through the streaming handler, so CSRF is checked inside it: still checked."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("ui-csrf-admin", "admin"))
    assert _upload(client, ctx).status_code == 403
    assert not _uploaded(ctx)
