from __future__ import annotations

from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"

    def ready(self) -> None:
        # The apps below read deployments' rows through hooks they expose, so they never import it
        # (tests/core/test_import_graph.py): the device API's `installed` field, the telemetry series'
        # `rollout=` filter, and each committed telemetry batch offered to the live rollout pages.
        from fleet.installed import InstalledProvider, installed_provider_set
        from telemetry.series import rollout_cohorts_lookup_set
        from telemetry.streaming import batch_listener_add

        # `tasks` registers the tasks the rollout services queue (services/rollout_queue.py) in every
        # process, not only in a Celery worker, which imports tasks modules itself
        from . import tasks  # noqa: F401
        from .rollout_streams import rollout_cohort_offer
        from .selectors import (
            device_installed,
            devices_installed,
            devices_with_current_installations,
            rollout_series_cohorts,
        )

        installed_provider_set(
            InstalledProvider(
                with_current=devices_with_current_installations,
                of_device=device_installed,
                of_devices=devices_installed,
            )
        )
        rollout_cohorts_lookup_set(rollout_series_cohorts)
        batch_listener_add(rollout_cohort_offer)
