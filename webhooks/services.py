"""Webhook subscriptions (audited CRUD, secrets shown once) and the deliveries an event creates.

The attempts themselves (signed POST, retry schedule, outcome) are in webhooks/deliveries.py.

Guarantees:
* A secret is returned only by `webhook_create` and `webhook_rotate_secret`; it is stored encrypted.
* An event reaches each active subscription to its kind once (unique (subscription, event_id)).
* Every attempt is logged (`WebhookAttempt`); the delivery's status moves by guarded update along
  DELIVERY_TRANSITIONS, so a duplicate task run cannot count an attempt twice.
* A subscription's URL passes `destinations.check_url` when saved, and every attempt connects only to an
  address `destinations.resolve` checked just before (public addresses, or WEBHOOK_ALLOWED_NETWORKS).
* Retries wait WEBHOOK_BACKOFF_SECONDS * 2**(attempt-1) plus up to 10 % jitter, up to
  WEBHOOK_MAX_ATTEMPTS attempts in all; the final outcome is audited.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from audit.actors import Actor
from audit.services import audit_record, diff, snapshot

from . import destinations
from .models import (
    EVENT_KINDS,
    WebhookDelivery,
    WebhookSubscription,
)
from .secrets_box import new_secret, seal
from .tasks import queue_deliveries

logger = logging.getLogger(__name__)

SUBSCRIPTION_FIELDS = ("name", "url", "event_kinds", "active")


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
    """Create a subscription with a fresh secret; the secret is in the result and nowhere else in clear.

    Raises destinations.DestinationRefused when the URL may not receive webhooks."""
    destinations.check_url(url)
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
    """Change name, URL, kinds or active; audited when anything changed. A new URL is checked as on create."""
    if "url" in fields:
        destinations.check_url(fields["url"])
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
        transaction.on_commit(lambda: queue_deliveries(ids))
    return ids
