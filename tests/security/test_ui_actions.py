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


ACTIONS = {
    "device-bulk": Action("device-bulk", _tag, _tagged),
    "model-version-upload": Action("model-version-upload", _upload, _uploaded),
}


def frontend_routes() -> dict[str, list[str]]:
    """Every named frontend route and the parameters its path takes."""
    resolver = get_resolver("frontend.urls")
    return {p.name: list(p.pattern.converters) for p in resolver.url_patterns if isinstance(p, URLPattern) and p.name}


@pytest.fixture
def ctx(published_version: Any) -> dict[str, Any]:
    return {"device": DeviceFactory(), "model": published_version.model}


def client_for(role: str | None) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(make_user(f"ui-{role}", role))
    return client


def test_the_matrix_covers_every_post_only_ui_route(ctx):
    from django.urls import reverse

    admin = client_for("admin")
    ids = {"model_id": ctx["model"].pk, "device_id": ctx["device"].pk}
    post_only = set()
    for name, params in frontend_routes().items():
        if admin.get(reverse(name, kwargs={p: ids[p] for p in params})).status_code == 405:
            post_only.add(name)
    # logout is POST-only too, but changes nothing of Fogdeck's: it only ends the session
    assert post_only - {"logout"} == set(ACTIONS)


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
    assert ACTIONS[name].post(client_for(role), ctx).status_code == 302
    assert ACTIONS[name].changed(ctx)
