"""One delivery attempt: the signed POST, its outcome, and when the next attempt is due.

Called by the `deliver_webhook` task (webhooks/tasks.py); the guarantees are listed in webhooks/services.py.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record

from . import destinations, signing
from .models import (
    DELIVERY_TERMINAL,
    DELIVERY_TRANSITIONS,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
)
from .secrets_box import unseal

logger = logging.getLogger(__name__)

DELIVERY_ACTOR = Actor.system("celery:webhooks")
USER_AGENT = "Fogdeck-Webhooks/1"
MAX_ERROR_CHARS = 500


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


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    """One POST to the address checked now (`destinations.resolve`); a redirect is an answer, not a new
    target (following it would re-send a signed body elsewhere, unchecked)."""
    try:
        destination = destinations.resolve(url)
    except destinations.DestinationRefused as exc:
        return None, f"refused: {exc.reason}"[:MAX_ERROR_CHARS]
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    conn = destinations.connection(destination, timeout=settings.WEBHOOK_TIMEOUT_SECONDS)
    try:
        conn.request("POST", destination.target, body=body, headers=headers)
        response = conn.getresponse()
        response.read(64 * 1024)
        code = int(response.status)
        return code, "" if 200 <= code < 300 else f"HTTP {code} {response.reason}"[:MAX_ERROR_CHARS]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    finally:
        conn.close()


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
                    # no error text: the audit log is every role's, the error detail is not (the delivery
                    # log shows it to operators and admins)
                },
            )
    if not ok:
        logger.info("webhook delivery %s attempt %s failed: %s", delivery.pk, number, error or code)
    return AttemptOutcome(status=target, attempt=number, retry_in=retry_in)


def webhook_deliveries_lost(*, older_than_seconds: int = 300) -> list[uuid.UUID]:
    """Deliveries whose task was lost (broker down at enqueue, worker gone with the retry): pending for
    longer than `older_than_seconds`, or retrying that long past their due time."""
    cutoff = timezone.now() - dt.timedelta(seconds=older_than_seconds)
    pending = WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, created_at__lt=cutoff)
    overdue = WebhookDelivery.objects.filter(status=DeliveryStatus.RETRYING, next_attempt_at__lt=cutoff)
    return list(pending.values_list("pk", flat=True)) + list(overdue.values_list("pk", flat=True))
