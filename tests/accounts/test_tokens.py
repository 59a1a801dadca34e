"""Finding 12: API tokens are named, expiring, revocable and stored only as a hash."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.services import TokenError, api_token_create, api_token_revoke
from audit.actors import Actor
from tests.factories import make_token, make_user

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def api(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_the_database_holds_no_usable_key(assert_audited):
    user = make_user("gina", "viewer")
    issued = api_token_create(actor=ACTOR, user=user, name="ci", days=90)
    assert api(issued.key).get("/api/v1/devices/").status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apitoken")
        dump = repr(cursor.fetchall())
    assert issued.key not in dump and issued.key[4:] not in dump
    assert issued.token.key_hash == hashlib.sha256(issued.key.encode()).hexdigest()
    assert issued.token.expires_at - timezone.now() > dt.timedelta(days=89)
    assert_audited("api_token", issued.token.pk, "api_token.create", actor="system:tests")


def test_an_expired_token_is_refused():
    key = make_token(make_user("hank", "viewer"), days=1)
    ApiToken.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    response = api(key).get("/api/v1/devices/")
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_a_revoked_token_is_refused_and_revoking_twice_changes_nothing(assert_audited):
    key = make_token(make_user("ivy", "viewer"), name="ci")
    token = ApiToken.objects.get()
    api_token_revoke(actor=ACTOR, token=token)
    assert api(key).get("/api/v1/devices/").status_code == 401
    first = assert_audited("api_token", token.pk, "api_token.revoke")
    api_token_revoke(actor=ACTOR, token=token)
    assert assert_audited("api_token", token.pk, "api_token.revoke").pk == first.pk


def test_a_wrong_secret_with_a_known_prefix_is_refused():
    key = make_token(make_user("jack", "viewer"))
    forged = key[:16] + ("A" if key[16] != "A" else "B") + key[17:]
    assert api(forged).get("/api/v1/devices/").status_code == 401


def test_last_use_is_recorded_at_most_once_a_minute():
    key = make_token(make_user("kate", "viewer"))
    assert api(key).get("/api/v1/devices/").status_code == 200
    first = ApiToken.objects.get().last_used_at
    assert first is not None
    api(key).get("/api/v1/devices/")
    assert ApiToken.objects.get().last_used_at == first


def test_names_are_unique_per_user_among_live_tokens():
    user = make_user("liam", "viewer")
    api_token_create(actor=ACTOR, user=user, name="ci")
    with pytest.raises(TokenError, match="already has a token named 'ci'"):
        api_token_create(actor=ACTOR, user=user, name="ci")
    api_token_revoke(actor=ACTOR, token=ApiToken.objects.get())
    api_token_create(actor=ACTOR, user=user, name="ci")  # the name is free again


def test_token_create_and_revoke_commands(capsys):
    make_user("mia", "admin")
    call_command("token_create", "mia", "--name", "ci", "--days", "30")
    key = capsys.readouterr().out.strip()
    assert key.startswith("fdt_") and api(key).get("/api/v1/devices/").status_code == 200
    token = ApiToken.objects.get(name="ci")
    assert dt.timedelta(days=29) < token.expires_at - timezone.now() <= dt.timedelta(days=30)
    call_command("token_list", "mia")
    assert "ci" in capsys.readouterr().out and key not in capsys.readouterr().out
    call_command("token_revoke", "mia", "--name", "ci")
    assert api(key).get("/api/v1/devices/").status_code == 401
    with pytest.raises(CommandError, match="no user named"):
        call_command("token_create", "nobody", "--name", "ci")


def test_clear_tokens_from_rest_framework_authtoken_are_hashed_and_the_table_dropped():
    import importlib

    from django.apps import apps

    migration = importlib.import_module("accounts.migrations.0002_hash_legacy_tokens")
    user = make_user("nora", "viewer")
    legacy_key = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, user_id integer, created timestamp)")
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, %s, %s)", [legacy_key, user.pk, None])
    migration.hash_legacy_tokens(apps, connection.schema_editor())
    assert "authtoken_token" not in connection.introspection.table_names()
    token = ApiToken.objects.get(user=user)
    assert token.name == "legacy" and token.expires_at is not None and legacy_key not in token.key_hash
    assert api(legacy_key).get("/api/v1/devices/").status_code == 200
