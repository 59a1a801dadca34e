"""The Celery app (`celery -A config worker`, `celery -A config beat`)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("fogdeck")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Periodic work; later issues add gate evaluation and job timeouts here.
app.conf.beat_schedule = {
    "fleet-mark-stale-devices-offline": {
        "task": "fleet.tasks.mark_stale_devices_offline",
        "schedule": 30.0,
    },
    "deployments-sweep-job-timeouts": {
        "task": "deployments.tasks.sweep_job_timeouts",
        "schedule": 10.0,
    },
    "telemetry-enforce-retention": {
        "task": "telemetry.tasks.enforce_retention",
        "schedule": 900.0,
    },
    "telemetry-evaluate-drift": {
        "task": "telemetry.tasks.evaluate_drift",
        "schedule": float(os.environ.get("DRIFT_EVALUATE_SECONDS", "300")),
    },
    "webhooks-requeue-lost-deliveries": {
        "task": "webhooks.tasks.requeue_webhook_deliveries",
        "schedule": 60.0,
    },
    "deployments-rollouts-tick": {
        "task": "deployments.tasks.rollouts_tick",
        "schedule": float(os.environ.get("ROLLOUT_TICK_SECONDS", "2")),
    },
}
