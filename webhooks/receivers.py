from __future__ import annotations

from typing import Any

from .services import webhook_deliveries_enqueue


def enqueue_deliveries(sender: str, payload: dict[str, Any], **_: Any) -> None:
    """`core.events.domain_event` receiver: one delivery per active subscription to this kind."""
    webhook_deliveries_enqueue(kind=sender, payload=payload)
