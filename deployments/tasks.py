from __future__ import annotations

import logging

from audit.actors import Actor
from core.celery_tasks import shared_task

from .models import Rollout
from .services.job_endings import jobs_sweep_timeouts
from .services.rollout_queue import ROLLOUT_TASKS
from .services.rollouts import rollout_cancel_jobs
from .services.tick import rollout_advance
from .services.tick import rollouts_tick as tick

logger = logging.getLogger(__name__)


@shared_task(acks_late=True)
def sweep_job_timeouts() -> int:
    """Beat: jobs with no terminal update by their deadline become TIMED_OUT (idempotent)."""
    return len(jobs_sweep_timeouts(actor=Actor.system("celery:job-timeouts")))


@shared_task(acks_late=True)
def rollouts_tick() -> int:
    """Beat: advance every running or rolling-back rollout (dispatch, gates, promotion, rollback)."""
    return len(tick())


@shared_task(acks_late=True)
def rollout_advance_task(rollout_id: int) -> str | None:
    """Advance one rollout now, right after an action (the beat tick would get there too)."""
    return rollout_advance(rollout_id=rollout_id)


@shared_task(acks_late=True)
def rollout_cancel_jobs_task(rollout_id: int) -> int:
    """Cancel the install jobs an aborted or rolling-back rollout must not run (idempotent)."""
    try:
        return rollout_cancel_jobs(actor=Actor.system("rollouts"), rollout_id=rollout_id)
    except Rollout.DoesNotExist:
        logger.warning("rollout %s vanished before its jobs were canceled", rollout_id)
        return 0


# the rollout services queue these after commit; they cannot import this module (it imports them)
ROLLOUT_TASKS.register(advance=rollout_advance_task, cancel_jobs=rollout_cancel_jobs_task)
