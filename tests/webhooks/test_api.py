from __future__ import annotations

import pytest

from webhooks.models import WebhookSubscription
from webhooks.secrets_box import unseal

pytestmark = pytest.mark.django_db
URL = "/api/v1/webhooks/"


def create(client, **overrides):
    body = {"name": "ops", "url": "https://hooks.example.com/fogdeck", "event_kinds": ["rollout.state_changed"]}
    return client.post(URL, body | overrides, format="json")


def test_admin_creates_and_sees_the_secret_once(admin_client, assert_audited):
    response = create(admin_client)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["secret"].startswith("whsec_") and response["Cache-Control"] == "no-store"
    subscription = WebhookSubscription.objects.get(pk=body["id"])
    assert unseal(subscription.secret_sealed) == body["secret"]
    assert body["secret"] not in subscription.secret_sealed  # stored sealed, not in clear
    assert "secret" not in admin_client.get(f"{URL}{body['id']}/").json()
    assert all("secret" not in row for row in admin_client.get(URL).json()["results"])
    entry = assert_audited("webhook", body["id"], "webhook.create", actor="user:alice-admin")
    assert body["secret"] not in str(entry.changes)


def test_rotating_the_secret_shows_the_new_one_once(admin_client, assert_audited):
    first = create(admin_client).json()
    rotated = admin_client.post(f"{URL}{first['id']}/rotate-secret/")
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != first["secret"]
    assert unseal(WebhookSubscription.objects.get(pk=first["id"]).secret_sealed) == rotated.json()["secret"]
    assert_audited("webhook", first["id"], "webhook.rotate_secret")


def test_update_and_delete_are_audited(admin_client, assert_audited):
    created = create(admin_client).json()
    patched = admin_client.patch(f"{URL}{created['id']}/", {"active": False}, format="json")
    assert patched.status_code == 200 and patched.json()["active"] is False
    assert_audited("webhook", created["id"], "webhook.update")
    assert admin_client.delete(f"{URL}{created['id']}/").status_code == 204
    assert_audited("webhook", created["id"], "webhook.delete")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"event_kinds": ["rollout.exploded"]}, "event_kinds.0"),
        ({"event_kinds": []}, "event_kinds"),
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_subscriptions_are_refused_with_the_field(admin_client, overrides, field):
    response = create(admin_client, **overrides)
    assert response.status_code == 400
    assert field in [e["field"] for e in response.json()["errors"]], response.json()


def test_viewers_read_operators_and_viewers_cannot_manage(admin_client, operator_client, viewer_client, anon_client):
    created = create(admin_client).json()
    assert viewer_client.get(URL).status_code == 200
    assert viewer_client.get(f"{URL}{created['id']}/deliveries/").status_code == 200
    assert create(operator_client).status_code == 403
    assert create(viewer_client).status_code == 403
    assert operator_client.post(f"{URL}{created['id']}/rotate-secret/").status_code == 403
    assert anon_client.get(URL).status_code == 401
