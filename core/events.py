"""Domain events: the one seam through which services announce what happened.

Services call `publish(kind, **payload)` after their transaction commits; receivers (webhooks, later
anything else) connect to `domain_event`. Publishing never fails the caller: a receiver that raises is
logged and the others still run.

Kinds in use (see docs/architecture.md): `rollout.state_changed`, `rollout.gate_failed`,
`rollout.rolled_back`, `drift.alert`, `fleet.offline_storm`.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)

domain_event = Signal()  # sender=kind (str), payload=dict


def publish(kind: str, **payload: object) -> None:
    """Announce `kind` with a JSON-serialisable payload once the current transaction commits."""

    def send() -> None:
        for receiver, result in domain_event.send_robust(sender=kind, payload=payload):
            if isinstance(result, Exception):
                logger.error("domain event %s: receiver %r failed: %s", kind, receiver, result)

    transaction.on_commit(send)
