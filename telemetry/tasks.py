from __future__ import annotations

from collections import Counter

from celery import shared_task

from audit.actors import Actor

from .drift import drift_evaluate
from .services import telemetry_enforce_retention


@shared_task(acks_late=True)
def enforce_retention() -> dict[str, int]:
    """Beat: drop raw samples and rollups past their retention periods."""
    result = telemetry_enforce_retention(actor=Actor.system("celery:telemetry-retention"))
    return {"raw_deleted": result.raw_deleted, "rollups_deleted": result.rollups_deleted}


@shared_task(acks_late=True)
def evaluate_drift() -> dict[str, int]:
    """Beat: score input drift per (version, site) and open or resolve drift alerts."""
    results = drift_evaluate(actor=Actor.system("celery:drift"))
    return dict(Counter(r.outcome for r in results))
