"""Findings 10 and 12: sign-ins, failures, lockouts and sign-outs are audited; a user name is locked out
after repeated failures from one address; the API and the sign-in pages are throttled."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.services import auth_lockout_clear
from audit.actors import Actor
from audit.models import AuditEntry
from tests.factories import make_token, make_user

pytestmark = pytest.mark.django_db
PASSWORD = "the-Right-passphrase-42"


@pytest.fixture
def admin_user():
    return get_user_model().objects.create_superuser("root", password=PASSWORD)


def post_login(client: Client, path: str, password: str, username: str = "root") -> int:
    fields = {"username": username, "password": password}
    if path.startswith("/admin/"):
        fields["next"] = "/admin/"
    return client.post(path, fields).status_code


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_twelve_wrong_passwords_lock_the_user_name_out_even_for_the_right_one(admin_user, path, settings):
    settings.LOGIN_LOCKOUT_FAILURES = 5
    client = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(12):
        assert post_login(client, path, "wrong-guess") == 200  # the form again, with an error
    assert post_login(client, path, PASSWORD) == 200  # refused: locked out
    assert "_auth_user_id" not in client.session
    failures = AuditEntry.objects.filter(action="auth.login_failed", object_id=str(admin_user.pk))
    assert failures.count() == 13
    assert failures.order_by("-id").first().changes["reason"] == "locked out"
    lockouts = AuditEntry.objects.filter(action="auth.lockout", object_id=str(admin_user.pk))
    assert lockouts.count() == 1 and lockouts.get().changes["address"] == "203.0.113.7"
    # another address is not locked out, and an admin can lift the lockout (audited)
    assert post_login(Client(REMOTE_ADDR="198.51.100.2"), path, PASSWORD) == 302
    auth_lockout_clear(actor=Actor.system("tests"), username="root", address="203.0.113.7")
    assert post_login(client, path, PASSWORD) == 302
    assert AuditEntry.objects.filter(action="auth.lockout_clear").count() == 1


def test_the_login_page_says_the_user_name_is_locked_out(admin_user, settings):
    settings.LOGIN_LOCKOUT_FAILURES = 2
    client = Client(REMOTE_ADDR="203.0.113.8")
    for _ in range(2):
        client.post("/login/", {"username": "root", "password": "nope"})
    page = client.post("/login/", {"username": "root", "password": PASSWORD}).content.decode()
    assert "Too many failed sign-ins" in page


def test_the_lockout_ends_after_its_cooldown(admin_user, settings):
    import time

    # long enough that two failed sign-ins (password hashing on a loaded machine) fit in one window
    settings.LOGIN_LOCKOUT_FAILURES, settings.LOGIN_LOCKOUT_SECONDS = 2, 4
    client = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(2):
        post_login(client, "/login/", "nope")
    assert post_login(client, "/login/", PASSWORD) == 200
    time.sleep(4.2)  # the cache entries carry the cooldown as their expiry
    assert post_login(client, "/login/", PASSWORD) == 302


def test_sign_in_and_sign_out_are_audited(admin_user):
    client = Client(REMOTE_ADDR="192.0.2.10")
    assert post_login(client, "/login/", PASSWORD) == 302
    login = AuditEntry.objects.get(action="auth.login")
    assert login.actor == "user:root" and login.changes["address"] == "192.0.2.10"
    assert client.post("/logout/").status_code == 302
    assert AuditEntry.objects.get(action="auth.logout").actor == "user:root"
    assert post_login(client, "/login/", "wrong") == 200
    failed = AuditEntry.objects.get(action="auth.login_failed")
    assert failed.actor == "system:login" and failed.changes["username"] == "root"


def test_the_api_throttles_a_user_and_anonymous_callers(settings):
    settings.API_THROTTLE_RATES = {"anon": "2/min", "user": "3/min", "auth": "100/min"}
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(make_user('olga', 'viewer'))}")
    assert [client.get("/api/v1/devices/").status_code for _ in range(3)] == [200, 200, 200]
    throttled = client.get("/api/v1/devices/")
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) >= 1
    assert throttled.json()["status"] == 429
    anon = APIClient()
    assert [anon.get("/api/v1/devices/").status_code for _ in range(3)] == [401, 401, 429]
    guesser = APIClient(REMOTE_ADDR="198.51.100.9")  # wrong keys count against the same rate
    guesser.credentials(HTTP_AUTHORIZATION="Token fdt_0123456789abguess")
    assert [guesser.get("/api/v1/devices/").status_code for _ in range(3)] == [401, 401, 429]


def test_sign_in_pages_are_throttled_per_address(admin_user, settings):
    settings.API_THROTTLE_RATES = {"anon": "100/min", "user": "100/min", "auth": "3/min"}
    client = Client(REMOTE_ADDR="203.0.113.20")
    statuses = [post_login(client, "/login/", "nope", username=f"u{i}") for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert post_login(client, "/admin/login/", PASSWORD) == 429
    assert post_login(Client(REMOTE_ADDR="203.0.113.21"), "/admin/login/", PASSWORD) == 302
