from __future__ import annotations

from celery import shared_task

from audit.actors import Actor

from .services import jobs_sweep_timeouts


@shared_task(acks_late=True)
def sweep_job_timeouts() -> int:
    """Beat: jobs with no terminal update by their deadline become TIMED_OUT (idempotent)."""
    return len(jobs_sweep_timeouts(actor=Actor.system("celery:job-timeouts")))
