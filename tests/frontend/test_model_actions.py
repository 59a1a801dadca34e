"""The model page's publish, revoke and alias buttons: the API's roles, CSRF, audited through the services."""

from __future__ import annotations

import io

import pytest
from django.test import Client

from audit.actors import Actor
from audit.models import AuditEntry
from models_registry.models import Alias, ModelVersion
from models_registry.samples import sample_versions
from models_registry.services import model_version_create
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def login(role: str | None, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(make_user(f"model-{role}", role))
    return client


@pytest.fixture
def draft(published_version) -> ModelVersion:
    return model_version_create(
        actor=Actor.system("tests"), model=published_version.model,
        artifact=io.BytesIO(sample_versions()[1].onnx_bytes), format="onnx", framework="other",
        requirements={"runtime": "onnxruntime", "min_runtime_version": "1.16"},
    )  # fmt: skip


def url(version: ModelVersion, verb: str) -> str:
    return f"/models/{version.model_id}/versions/{version.number}/{verb}/"


def test_admin_publishes_a_draft_from_the_page(draft, assert_audited):
    admin = login("admin")
    page = admin.get(f"/models/{draft.model_id}/?version={draft.number}").content.decode()
    assert 'data-testid="publish"' in page and 'data-testid="revoke"' in page
    response = admin.post(url(draft, "publish"), follow=True)
    draft.refresh_from_db()
    assert draft.status == "published" and draft.signature
    assert "Published v2" in response.content.decode()
    assert_audited("model_version", draft.pk, "model_version.publish", actor="user:model-admin")


def test_alias_set_and_remove(published_version, assert_audited):
    admin = login("admin")
    model = published_version.model
    admin.post(url(published_version, "alias-set"), {"alias": "production"})
    assert Alias.objects.get(model=model, name="production").version == published_version
    assert_audited("model", model.pk, "model.alias_set", actor="user:model-admin")
    page = admin.get(f"/models/{model.pk}/?version={published_version.number}").content.decode()
    assert "Remove alias production" in page
    admin.post(url(published_version, "alias-delete"), {"alias": "production"})
    assert not Alias.objects.filter(model=model, name="production").exists()
    assert_audited("model", model.pk, "model.alias_delete", actor="user:model-admin")


def test_an_alias_cannot_point_at_a_draft_and_the_page_says_why(draft):
    response = login("admin").post(url(draft, "alias-set"), {"alias": "production"}, follow=True)
    assert "Could not alias set" in response.content.decode() and "only point at a published version" in (
        response.content.decode()
    )
    assert not Alias.objects.exists()


def test_revoke_needs_a_reason(published_version, assert_audited):
    admin = login("admin")
    response = admin.post(url(published_version, "revoke"), {"reason": ""}, follow=True)
    assert "needs a reason" in response.content.decode()
    published_version.refresh_from_db()
    assert published_version.status == "published"
    admin.post(url(published_version, "revoke"), {"reason": "leaks PII"})
    published_version.refresh_from_db()
    assert published_version.status == "revoked" and published_version.revoked_reason == "leaks PII"
    assert_audited("model_version", published_version.pk, "model_version.revoke", actor="user:model-admin")


def test_operator_moves_aliases_but_cannot_publish_or_revoke(draft, published_version):
    operator = login("operator")
    page = operator.get(f"/models/{draft.model_id}/?version={published_version.number}").content.decode()
    assert 'data-testid="alias-set"' in page and 'data-testid="revoke"' not in page
    assert operator.post(url(draft, "publish")).status_code == 403
    assert operator.post(url(published_version, "revoke"), {"reason": "x"}).status_code == 403
    assert operator.post(url(published_version, "alias-set"), {"alias": "staging"}).status_code == 302
    assert Alias.objects.filter(name="staging").exists()
    draft.refresh_from_db()
    published_version.refresh_from_db()
    assert draft.status == "draft" and published_version.status == "published"


def test_viewer_sees_no_buttons_and_is_refused(draft):
    viewer = login("viewer")
    assert 'data-testid="version-actions"' not in viewer.get(f"/models/{draft.model_id}/").content.decode()
    for verb in ("publish", "revoke", "alias-set", "alias-delete"):
        assert viewer.post(url(draft, verb), {"reason": "x", "alias": "a"}).status_code == 403, verb
    assert not AuditEntry.objects.filter(actor="user:model-viewer").exclude(action="auth.login").exists()


def test_anonymous_goes_to_sign_in_and_posts_need_csrf(draft):
    response = Client().post(url(draft, "publish"))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert login("admin", csrf=True).post(url(draft, "publish")).status_code == 403
    draft.refresh_from_db()
    assert draft.status == "draft"


def test_unknown_verb_is_404(draft):
    assert login("admin").post(url(draft, "explode")).status_code == 404
