from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from audit.actors import Actor
from core.events import publish
from webhooks import signing
from webhooks.deliveries import retry_delay, webhook_delivery_attempt
from webhooks.models import DeliveryStatus, WebhookDelivery
from webhooks.services import webhook_create

pytestmark = pytest.mark.django_db
ADMIN = Actor.system("tests")


def independent_check(secret: str, header: str, body: bytes) -> bool:
    """The receiver's side, written from the documentation rather than with webhooks.signing."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 60


def test_a_correctly_signed_delivery_arrives(receiver, eager_celery, django_capture_on_commit_callbacks):
    created = webhook_create(actor=ADMIN, name="ops", url=receiver.url, event_kinds=["rollout.state_changed"])
    with django_capture_on_commit_callbacks(execute=True):
        publish("rollout.state_changed", rollout=7, from_status="running", to_status="completed")
    assert len(receiver.received) == 1
    got = receiver.received[0]
    assert independent_check(created.secret, got.headers["X-Fogdeck-Signature"], got.body)
    assert not independent_check("whsec_wrong", got.headers["X-Fogdeck-Signature"], got.body)
    assert got.headers["X-Fogdeck-Event"] == "rollout.state_changed"
    assert got.document["kind"] == "rollout.state_changed"
    assert got.document["data"] == {"rollout": 7, "from_status": "running", "to_status": "completed"}
    delivery = WebhookDelivery.objects.get()
    assert got.headers["X-Fogdeck-Delivery"] == str(delivery.pk) == got.document["delivery"]
    assert (delivery.status, delivery.attempts, delivery.response_code) == (DeliveryStatus.SUCCEEDED, 1, 200)


def test_a_500_is_retried_and_the_log_shows_both_attempts(
    receiver, eager_celery, django_capture_on_commit_callbacks, admin_client, assert_audited
):
    receiver.script = [500]
    created = webhook_create(actor=ADMIN, name="ops", url=receiver.url, event_kinds=["rollout.gate_failed"])
    with django_capture_on_commit_callbacks(execute=True):
        publish("rollout.gate_failed", rollout=3, gate="health")
    assert len(receiver.received) == 2
    assert receiver.received[0].body == receiver.received[1].body  # same event, same delivery id
    for got in receiver.received:
        assert signing.verify(created.secret, got.headers["X-Fogdeck-Signature"], got.body)
    log = admin_client.get(f"/api/v1/webhooks/{created.subscription.pk}/deliveries/").json()["results"]
    assert len(log) == 1
    entry = log[0]
    assert (entry["status"], entry["attempts"], entry["response_code"]) == ("succeeded", 2, 200)
    assert [(a["number"], a["response_code"]) for a in entry["attempt_log"]] == [(1, 500), (2, 200)]
    assert "500" in entry["attempt_log"][0]["error"] and entry["attempt_log"][1]["error"] == ""
    assert all(a["latency_ms"] >= 0 for a in entry["attempt_log"])
    assert_audited("webhook", created.subscription.pk, "webhook.delivery_succeeded", actor="system:celery:webhooks")


def test_delivery_gives_up_after_the_last_attempt(receiver, eager_celery, settings, django_capture_on_commit_callbacks):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    receiver.script = [500, 502, 503, 200]
    webhook_create(actor=ADMIN, name="ops", url=receiver.url, event_kinds=["drift.alert"])
    with django_capture_on_commit_callbacks(execute=True):
        publish("drift.alert", site="Lyon", version=2)
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_code) == (DeliveryStatus.FAILED, 3, 503)
    assert len(receiver.received) == 3
    # a stray re-run of the task does not send a finished delivery again
    assert webhook_delivery_attempt(delivery_id=delivery.pk).status == DeliveryStatus.FAILED
    assert len(receiver.received) == 3


def test_unreachable_receiver_is_logged_as_an_error(eager_celery, settings, django_capture_on_commit_callbacks):
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    webhook_create(actor=ADMIN, name="gone", url="http://127.0.0.1:9/", event_kinds=["drift.alert"])
    with django_capture_on_commit_callbacks(execute=True):
        publish("drift.alert", site="Lyon")
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED and delivery.response_code is None
    assert delivery.error


def test_only_active_subscriptions_to_the_kind_get_it(receiver, eager_celery, django_capture_on_commit_callbacks):
    webhook_create(actor=ADMIN, name="rollouts", url=receiver.url, event_kinds=["rollout.state_changed"])
    webhook_create(actor=ADMIN, name="off", url=receiver.url, event_kinds=["drift.alert"], active=False)
    wanted = webhook_create(actor=ADMIN, name="drift", url=receiver.url, event_kinds=["drift.alert"])
    with django_capture_on_commit_callbacks(execute=True):
        publish("drift.alert", site="Lyon")
    assert list(WebhookDelivery.objects.values_list("subscription_id", flat=True)) == [wanted.subscription.pk]
    assert len(receiver.received) == 1


def test_backoff_doubles_with_jitter(settings):
    settings.WEBHOOK_BACKOFF_SECONDS = 10
    delays = [retry_delay(n) for n in (1, 2, 3, 4)]
    for n, delay in enumerate(delays, start=1):
        base = 10 * 2 ** (n - 1)
        assert base <= delay <= base * 1.1


def test_signature_verification_rejects_tampering_and_replays():
    body = b'{"kind":"drift.alert"}'
    header = signing.signature_header("s3cret", body)
    assert signing.verify("s3cret", header, body)
    assert not signing.verify("s3cret", header, body + b" ")
    assert not signing.verify("other", header, body)
    old = signing.signature_header("s3cret", body, timestamp=int(time.time()) - 3600)
    assert not signing.verify("s3cret", old, body)
    assert not signing.verify("s3cret", "garbage", body)
