"""The Celery app (`celery -A config worker`, `celery -A config beat`) and its beat schedule."""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, signals
from celery.beat import PersistentScheduler

from core import heartbeat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("fogdeck")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def beat_schedule() -> dict[str, dict[str, Any]]:
    """Periodic work. Intervals that an operator may tune come from config/settings.py, whose env helpers
    reject a bad value with the variable's name (a bare `float(os.environ[...])` would fail obscurely)."""
    from django.conf import settings

    return {
        "fleet-mark-stale-devices-offline": {"task": "fleet.tasks.mark_stale_devices_offline", "schedule": 30.0},
        "deployments-sweep-job-timeouts": {"task": "deployments.tasks.sweep_job_timeouts", "schedule": 10.0},
        "deployments-rollouts-tick": {
            "task": "deployments.tasks.rollouts_tick",
            "schedule": float(settings.ROLLOUT_TICK_SECONDS),
        },
        "telemetry-enforce-retention": {"task": "telemetry.tasks.enforce_retention", "schedule": 900.0},
        "telemetry-evaluate-drift": {
            "task": "telemetry.tasks.evaluate_drift",
            "schedule": float(settings.DRIFT_EVALUATE_SECONDS),
        },
        "webhooks-requeue-lost-deliveries": {"task": "webhooks.tasks.requeue_webhook_deliveries", "schedule": 60.0},
        "mqttbridge-prune-outbox": {"task": "mqttbridge.tasks.prune_outbox", "schedule": 3600.0},
    }


@app.on_after_configure.connect
def _install_beat_schedule(sender: Celery, source: Any, **kwargs: Any) -> None:
    # Read when Celery loads its configuration, i.e. after Django's settings exist, not at `import config`.
    source.beat_schedule = beat_schedule()


# --- metrics (core/metrics.py): tasks by outcome, served by the worker's main process ---------------
@signals.task_postrun.connect
def _count_task(task: Any = None, state: str | None = None, **_: Any) -> None:
    from core import metrics

    metrics.TASKS.labels(getattr(task, "name", "?"), (state or "unknown").lower()).inc()


@signals.worker_init.connect
def _serve_worker_metrics(**_: Any) -> None:
    """WORKER_METRICS_PORT on: the main process serves the metrics. Tasks run in the pool's children, so with
    the prefork pool set PROMETHEUS_MULTIPROC_DIR (the scrape sums every child's files); otherwise the main
    process only sees its own counters."""
    import logging

    from django.conf import settings

    from core.metrics import serve_process_metrics

    if settings.WORKER_METRICS_PORT:
        serve_process_metrics(settings.WORKER_METRICS_PORT, settings.METRICS_BIND)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            logging.getLogger("fogdeck.metrics").warning(
                "WORKER_METRICS_PORT without PROMETHEUS_MULTIPROC_DIR: a prefork pool's task counts are not seen"
            )


@signals.worker_process_shutdown.connect
def _forget_dead_child(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


# --- readiness (core/heartbeat.py; docker-compose's healthchecks read it) ---------------------------
WORKER_HEARTBEAT_SECONDS = 10.0
_worker_stopping = threading.Event()


class HeartbeatScheduler(PersistentScheduler):
    """Celery's default scheduler that also marks beat ready on every tick (at least every ROLLOUT_TICK_SECONDS)."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        heartbeat.beat("beat")
        return super().tick(*args, **kwargs)


app.conf.beat_scheduler = "config.celery:HeartbeatScheduler"


@signals.worker_ready.connect
def _worker_heartbeat(sender: Any = None, **kwargs: Any) -> None:
    """While the worker runs, mark it ready every WORKER_HEARTBEAT_SECONDS if its broker connection is up."""

    def loop() -> None:
        while not _worker_stopping.is_set():
            connection = getattr(sender, "connection", None)
            if connection is None or connection.connected:
                heartbeat.beat("worker")
            _worker_stopping.wait(WORKER_HEARTBEAT_SECONDS)

    threading.Thread(target=loop, name="fogdeck-worker-heartbeat", daemon=True).start()


@signals.worker_shutting_down.connect
def _worker_not_ready(**kwargs: Any) -> None:
    _worker_stopping.set()
    heartbeat.clear("worker")
