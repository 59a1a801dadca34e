"""The /webhooks/ page (frontend/webhook_views.py) through Django's test client."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.actors import Actor
from tests.factories import make_user
from webhooks.models import WebhookSubscription
from webhooks.secrets_box import unseal
from webhooks.services import webhook_create

pytestmark = pytest.mark.django_db


def login(role: str) -> Client:
    client = Client()
    client.force_login(make_user(f"page-{role}", role))
    return client


def test_admin_creates_a_subscription_and_sees_its_secret_once(assert_audited):
    admin = login("admin")
    response = admin.post(
        "/webhooks/",
        {"name": "pager", "url": "https://hooks.example.com/x", "event_kinds": ["fleet.offline_storm", "drift.alert"]},
    )
    assert response.status_code == 200
    subscription = WebhookSubscription.objects.get(name="pager")
    secret = unseal(subscription.secret_sealed)
    assert secret in response.content.decode() and response["Cache-Control"] == "no-store"
    assert subscription.event_kinds == ["fleet.offline_storm", "drift.alert"]
    assert_audited("webhook", subscription.pk, "webhook.create", actor="user:page-admin")
    again = admin.get("/webhooks/").content.decode()
    assert "pager" in again and secret not in again


def test_bad_form_answers_400_with_the_reason():
    response = login("admin").post("/webhooks/", {"name": "x", "url": "not a url"})
    assert response.status_code == 400
    assert not WebhookSubscription.objects.exists()


def test_admin_pauses_rotates_and_deletes(assert_audited):
    created = webhook_create(
        actor=Actor.system("tests"), name="ops", url="https://h.example/x", event_kinds=["drift.alert"]
    )
    pk = created.subscription.pk
    admin = login("admin")
    assert admin.post(f"/webhooks/{pk}/toggle/").status_code == 302
    assert WebhookSubscription.objects.get(pk=pk).active is False
    rotated = admin.post(f"/webhooks/{pk}/rotate/")
    new_secret = unseal(WebhookSubscription.objects.get(pk=pk).secret_sealed)
    assert new_secret != created.secret and new_secret in rotated.content.decode()
    assert admin.post(f"/webhooks/{pk}/delete/").status_code == 302
    assert not WebhookSubscription.objects.filter(pk=pk).exists()
    assert_audited("webhook", pk, "webhook.delete")


def test_viewers_read_but_cannot_manage():
    created = webhook_create(
        actor=Actor.system("tests"), name="ops", url="https://h.example/x", event_kinds=["drift.alert"]
    )
    viewer = login("viewer")
    page = viewer.get("/webhooks/")
    assert page.status_code == 200 and "ops" in page.content.decode()
    assert 'data-testid="new-subscription"' not in page.content.decode()
    assert (
        viewer.post("/webhooks/", {"name": "x", "url": "https://x.example", "event_kinds": ["drift.alert"]}).status_code
        == 403
    )
    assert login("operator").post(f"/webhooks/{created.subscription.pk}/delete/").status_code == 403
    assert WebhookSubscription.objects.count() == 1
