"""Webhook subscriptions (audited CRUD, secrets shown once) and signed, retried deliveries.

Guarantees:
* A secret is returned only by `webhook_create` and `webhook_rotate_secret`; it is stored encrypted.
* An event reaches each active subscription to its kind once (unique (subscription, event_id)).
* Every attempt is logged (`WebhookAttempt`); the delivery's status moves by guarded update along
  DELIVERY_TRANSITIONS, so a duplicate task run cannot count an attempt twice.
* Retries wait WEBHOOK_BACKOFF_SECONDS * 2**(attempt-1) plus up to 10 % jitter, up to
  WEBHOOK_MAX_ATTEMPTS attempts in all; the final outcome is audited.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record, diff, snapshot

from . import signing
from .models import (
    DELIVERY_TERMINAL,
    DELIVERY_TRANSITIONS,
    EVENT_KINDS,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from .secrets_box import new_secret, seal, unseal

logger = logging.getLogger(__name__)

SUBSCRIPTION_FIELDS = ("name", "url", "event_kinds", "active")
DELIVERY_ACTOR = Actor.system("celery:webhooks")
USER_AGENT = "Fogdeck-Webhooks/1"
MAX_ERROR_CHARS = 500


class UnknownEventKind(ValueError):
    def __init__(self, kinds: Iterable[str]) -> None:
        self.kinds = sorted(kinds)
        super().__init__(f"unknown event kinds: {', '.join(self.kinds)} (known: {', '.join(EVENT_KINDS)})")


def _check_kinds(kinds: Iterable[str]) -> list[str]:
    kinds = list(dict.fromkeys(kinds))
    unknown = set(kinds) - set(EVENT_KINDS)
    if unknown:
        raise UnknownEventKind(unknown)
    return kinds


# --- subscriptions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionWithSecret:
    subscription: WebhookSubscription
    secret: str  # shown once


@transaction.atomic
def webhook_create(
    *, actor: Actor, name: str, url: str, event_kinds: Iterable[str], active: bool = True
) -> SubscriptionWithSecret:
    """Create a subscription with a fresh secret; the secret is in the result and nowhere else in clear."""
    secret = new_secret()
    subscription = WebhookSubscription(
        name=name,
        url=url,
        event_kinds=_check_kinds(event_kinds),
        active=active,
        secret_sealed=seal(secret),
        created_by_id=actor.user_id,
    )
    subscription.full_clean()
    subscription.save()
    audit_record(
        actor=actor,
        action="webhook.create",
        object_type="webhook",
        object_id=subscription.pk,
        object_repr=subscription.name,
        changes=diff({}, snapshot(subscription, SUBSCRIPTION_FIELDS)),
    )
    return SubscriptionWithSecret(subscription=subscription, secret=secret)


@transaction.atomic
def webhook_update(*, actor: Actor, subscription: WebhookSubscription, **fields: Any) -> WebhookSubscription:
    before = snapshot(subscription, SUBSCRIPTION_FIELDS)
    if "event_kinds" in fields:
        fields["event_kinds"] = _check_kinds(fields["event_kinds"])
    for key, value in fields.items():
        if key not in SUBSCRIPTION_FIELDS:
            raise ValueError(f"{key} cannot be changed")
        setattr(subscription, key, value)
    subscription.full_clean()
    subscription.save()
    changes = diff(before, snapshot(subscription, SUBSCRIPTION_FIELDS))
    if changes:
        audit_record(
            actor=actor,
            action="webhook.update",
            object_type="webhook",
            object_id=subscription.pk,
            object_repr=subscription.name,
            changes=changes,
        )
    return subscription


@transaction.atomic
def webhook_delete(*, actor: Actor, subscription: WebhookSubscription) -> None:
    before = snapshot(subscription, SUBSCRIPTION_FIELDS)
    pk, name = subscription.pk, subscription.name
    subscription.delete()
    audit_record(
        actor=actor,
        action="webhook.delete",
        object_type="webhook",
        object_id=pk,
        object_repr=name,
        changes=diff(before, {}),
    )


@transaction.atomic
def webhook_rotate_secret(*, actor: Actor, subscription: WebhookSubscription) -> SubscriptionWithSecret:
    """Replace the secret at once (deliveries from now on are signed with the new one); returns it once."""
    secret = new_secret()
    subscription.secret_sealed = seal(secret)
    subscription.save(update_fields=["secret_sealed", "updated_at"])
    audit_record(
        actor=actor,
        action="webhook.rotate_secret",
        object_type="webhook",
        object_id=subscription.pk,
        object_repr=subscription.name,
        changes={"secret": "rotated"},
    )
    return SubscriptionWithSecret(subscription=subscription, secret=secret)


# --- deliveries -----------------------------------------------------------------------------------


def webhook_deliveries_enqueue(*, kind: str, payload: dict[str, Any]) -> list[uuid.UUID]:
    """One delivery per active subscription to `kind`, each sent by a Celery task after commit."""
    event_id = uuid.uuid4()
    # few subscriptions: the kind filter runs here, portable across databases
    subscriptions = [s for s in WebhookSubscription.objects.active() if s.wants(kind)]
    if not subscriptions:
        return []
    data = json.loads(json.dumps(payload, cls=DjangoJSONEncoder))
    with transaction.atomic():
        deliveries = WebhookDelivery.objects.bulk_create(
            [WebhookDelivery(subscription=s, event_id=event_id, kind=kind, payload=data) for s in subscriptions]
        )
        ids = [d.pk for d in deliveries]
        transaction.on_commit(lambda: _queue(ids))
    return ids


def _queue(ids: list[uuid.UUID], countdown: float | None = None) -> None:
    from .tasks import deliver_webhook

    for delivery_id in ids:
        try:
            deliver_webhook.apply_async((str(delivery_id),), countdown=countdown)
        except Exception:  # a broker outage must not fail the event; the sweep re-queues pending deliveries
            logger.warning("could not queue webhook delivery %s", delivery_id, exc_info=True)


def delivery_body(delivery: WebhookDelivery) -> bytes:
    """The exact bytes POSTed (the same on every attempt; only the signature's timestamp changes)."""
    document = {
        "id": str(delivery.event_id),
        "delivery": str(delivery.pk),
        "kind": delivery.kind,
        "created_at": delivery.created_at.isoformat(),
        "data": delivery.payload,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a new target: following it would re-send a signed body elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only
    try:
        with _opener.open(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            response.read(64 * 1024)
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        return int(exc.code), f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(exc).__name__}: {reason}"[:MAX_ERROR_CHARS]


def retry_delay(attempt: int) -> float:
    """Seconds before retry number `attempt` (1 = the first retry): exponential backoff plus jitter."""
    base = settings.WEBHOOK_BACKOFF_SECONDS * 2 ** (attempt - 1)
    return base + random.uniform(0, base * 0.1)  # noqa: S311 - jitter, not cryptography


@dataclass(frozen=True)
class AttemptOutcome:
    status: str
    attempt: int
    retry_in: float | None = None  # seconds, when another attempt is due


def webhook_delivery_attempt(*, delivery_id: uuid.UUID | str, now: dt.datetime | None = None) -> AttemptOutcome:
    """POST the delivery once, signed, and log the attempt. The HTTP call runs outside any transaction.

    Raises WebhookDelivery.DoesNotExist when the delivery (or its subscription) is gone.
    """
    delivery = WebhookDelivery.objects.select_related("subscription").get(pk=delivery_id)
    if delivery.status in DELIVERY_TERMINAL:
        return AttemptOutcome(status=delivery.status, attempt=delivery.attempts)
    subscription = delivery.subscription
    number = delivery.attempts + 1
    body = delivery_body(delivery)
    started = time.perf_counter()
    if not subscription.active:
        code, error = None, "subscription is inactive"
    else:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Fogdeck-Event": delivery.kind,
            "X-Fogdeck-Delivery": str(delivery.pk),
            signing.SIGNATURE_HEADER: signing.signature_header(unseal(subscription.secret_sealed), body),
        }
        code, error = _post(subscription.url, body, headers)
    latency_ms = (time.perf_counter() - started) * 1000
    ok = code is not None and 200 <= code < 300
    out_of_attempts = number >= settings.WEBHOOK_MAX_ATTEMPTS or not subscription.active
    if ok:
        target = DeliveryStatus.SUCCEEDED
    elif out_of_attempts:
        target = DeliveryStatus.FAILED
    else:
        target = DeliveryStatus.RETRYING
    at = now or timezone.now()
    retry_in = retry_delay(number) if target == DeliveryStatus.RETRYING else None
    with transaction.atomic():
        allowed = [s for s, targets in DELIVERY_TRANSITIONS.items() if target in targets]
        updated = WebhookDelivery.objects.filter(pk=delivery.pk, status__in=allowed, attempts=delivery.attempts).update(
            status=target,
            attempts=number,
            response_code=code,
            latency_ms=latency_ms,
            error=error,
            next_attempt_at=at + dt.timedelta(seconds=retry_in) if retry_in is not None else None,
            finished_at=at if target in DELIVERY_TERMINAL else None,
        )
        if not updated:  # another run of this task recorded this attempt first
            current = WebhookDelivery.objects.get(pk=delivery.pk)
            return AttemptOutcome(status=current.status, attempt=current.attempts)
        WebhookAttempt.objects.create(
            delivery=delivery, number=number, at=at, response_code=code, latency_ms=latency_ms, error=error
        )
        if target in DELIVERY_TERMINAL:
            audit_record(
                actor=DELIVERY_ACTOR,
                action=f"webhook.delivery_{target}",
                object_type="webhook",
                object_id=subscription.pk,
                object_repr=subscription.name,
                changes={
                    "delivery": str(delivery.pk),
                    "kind": delivery.kind,
                    "attempts": number,
                    "response_code": code,
                    **({"error": error} if error else {}),
                },
            )
    if not ok:
        logger.info("webhook delivery %s attempt %s failed: %s", delivery.pk, number, error or code)
    return AttemptOutcome(status=target, attempt=number, retry_in=retry_in)


def webhook_deliveries_requeue(*, older_than_seconds: int = 300) -> int:
    """Re-queue deliveries whose task was lost (broker down at enqueue, worker gone with the retry)."""
    cutoff = timezone.now() - dt.timedelta(seconds=older_than_seconds)
    ids = list(
        WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, created_at__lt=cutoff).values_list(
            "pk", flat=True
        )
    ) + list(
        WebhookDelivery.objects.filter(status=DeliveryStatus.RETRYING, next_attempt_at__lt=cutoff).values_list(
            "pk", flat=True
        )
    )
    _queue(ids)
    return len(ids)
