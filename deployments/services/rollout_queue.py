"""Rollout work queued after commit: advancing a rollout now, canceling the jobs it must not run.

The Celery tasks doing that work (deployments/tasks.py) call the rollout services, so the services cannot
import them without an import circle. tasks.py hands its tasks to `ROLLOUT_TASKS` instead when it is
imported: by `DeploymentsConfig.ready` in every process, and by a Celery worker anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import transaction

logger = logging.getLogger(__name__)


class Delayable(Protocol):
    """What the services need of a Celery task."""

    name: str

    def delay(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class RolloutTasks:
    """The tasks the rollout services queue, registered by deployments/tasks.py."""

    advance: Delayable | None = None  # tasks.rollout_advance_task
    cancel_jobs: Delayable | None = None  # tasks.rollout_cancel_jobs_task

    def register(self, *, advance: Delayable, cancel_jobs: Delayable) -> None:
        self.advance, self.cancel_jobs = advance, cancel_jobs


ROLLOUT_TASKS = RolloutTasks()


def queue_advance(rollout_id: int) -> None:
    """After commit, advance the rollout now (the beat tick would get there too)."""
    transaction.on_commit(lambda: _send(ROLLOUT_TASKS.advance, "advance", rollout_id))


def queue_cancel_jobs(rollout_id: int) -> None:
    """After commit, cancel the install jobs an aborted or rolling-back rollout must not run."""
    transaction.on_commit(lambda: _send(ROLLOUT_TASKS.cancel_jobs, "cancel_jobs", rollout_id))


def _send(task: Delayable | None, work: str, rollout_id: int) -> None:
    if task is None:
        raise RuntimeError(f"no task registered for rollout {work}: deployments.tasks was not imported")
    try:
        task.delay(rollout_id)
    except Exception:  # the broker being down must not fail a committed request; beat retries
        logger.warning("could not queue %s for rollout %s", task.name, rollout_id, exc_info=True)
