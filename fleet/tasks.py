from __future__ import annotations

from celery import shared_task

from audit.actors import Actor

from .services import devices_mark_stale_offline


@shared_task(acks_late=True)
def mark_stale_devices_offline() -> int:
    """Beat: devices whose heartbeat stopped without a Last Will are marked offline."""
    return len(devices_mark_stale_offline(actor=Actor.system("celery:stale-sweep")))
