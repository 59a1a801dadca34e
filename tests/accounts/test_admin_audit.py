"""Finding 10: users, groups (roles) and tokens changed in /admin/ land in the audit chain."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from accounts.models import ApiToken
from audit.models import AuditEntry
from audit.services import audit_verify_chain
from tests.factories import make_token, make_user

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def admin_browser(client):
    user = User.objects.create_superuser("root-admin", password="x-not-used-1!")
    client.force_login(user)
    return client


def test_a_role_granted_in_the_admin_is_audited(admin_browser, assert_audited):
    user = make_user("bob", "viewer")
    operator = Group.objects.get_or_create(name="operator")[0]
    viewer = Group.objects.get(name="viewer")
    response = admin_browser.post(
        f"/admin/auth/user/{user.pk}/change/",
        {
            "username": "bob",
            "is_active": "on",
            "groups": [viewer.pk, operator.pk],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    entry = assert_audited("user", user.pk, "user.update", actor="user:root-admin")
    assert entry.changes["groups"] == {"before": ["viewer"], "after": ["operator", "viewer"]}
    assert entry.changes["via"] == "admin" and "password" not in entry.changes
    assert audit_verify_chain().ok


def test_a_user_added_in_the_admin_is_audited_without_the_password_hash(admin_browser, assert_audited):
    response = admin_browser.post(
        "/admin/auth/user/add/",
        {"username": "carol", "password1": "a-Long-pass-phrase-9", "password2": "a-Long-pass-phrase-9"},
    )
    assert response.status_code == 302, response.content[:2000]
    carol = User.objects.get(username="carol")
    entry = assert_audited("user", carol.pk, "user.create", actor="user:root-admin")
    assert entry.changes["password"] == {"before": "", "after": "(hidden)"}
    assert carol.password not in str(entry.changes)


def test_a_password_set_in_the_admin_is_audited(admin_browser, assert_audited):
    user = make_user("dave", "viewer")
    response = admin_browser.post(
        f"/admin/auth/user/{user.pk}/password/",
        {"password1": "another-Long-phrase-7", "password2": "another-Long-phrase-7", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content[:2000]
    entry = assert_audited("user", user.pk, "user.set_password", actor="user:root-admin")
    assert "another" not in str(entry.changes)


def test_group_changes_and_user_deletion_in_the_admin_are_audited(admin_browser, assert_audited):
    group = Group.objects.create(name="auditors")
    response = admin_browser.post(f"/admin/auth/group/{group.pk}/change/", {"name": "auditors-2"})
    assert response.status_code == 302
    assert assert_audited("group", group.pk, "group.update").changes["name"] == {
        "before": "auditors",
        "after": "auditors-2",
    }
    user = make_user("erin", "viewer")
    assert admin_browser.post(f"/admin/auth/user/{user.pk}/delete/", {"post": "yes"}).status_code == 302
    assert_audited("user", user.pk, "user.delete", actor="user:root-admin")


def test_tokens_revoked_in_the_admin_are_audited_and_stop_working(admin_browser, assert_audited, client):
    key = make_token(make_user("frank", "viewer"), name="ci")
    token = ApiToken.objects.get(name="ci")
    response = admin_browser.post(
        "/admin/accounts/apitoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]}
    )
    assert response.status_code == 302
    assert_audited("api_token", token.pk, "api_token.revoke", actor="user:root-admin")
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/devices/").status_code == 401
    assert admin_browser.get("/admin/accounts/apitoken/add/").status_code == 403  # keys come from token_create
    assert AuditEntry.objects.filter(action="api_token.create", object_id=str(token.pk)).exists()
