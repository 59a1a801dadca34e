"""The fleet's state as Prometheus metrics, read from the database at scrape time (jobs, rollouts, gate
evaluations, the outbox), so every process's work is counted once, whoever did it."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class FleetStateCollector(Collector):
    """Read at scrape time from the database, so every process's work is counted once, whoever did it."""

    def collect(self):  # type: ignore[no-untyped-def]
        from django.db.models import Count, Min
        from django.utils import timezone

        from deployments.models import GateEvaluation, Job, Rollout
        from outbox.models import OutboxMessage

        jobs = GaugeMetricFamily("fogdeck_jobs", "jobs by kind and state", labels=["kind", "status"])
        for row in Job.objects.order_by().values("kind", "status").annotate(n=Count("id")):
            jobs.add_metric([row["kind"], row["status"]], row["n"])
        yield jobs
        rollouts = GaugeMetricFamily("fogdeck_rollouts", "rollouts by state", labels=["status"])
        for row in Rollout.objects.order_by().values("status").annotate(n=Count("id")):
            rollouts.add_metric([row["status"]], row["n"])
        yield rollouts
        verdicts = CounterMetricFamily(
            "fogdeck_gate_evaluations", "gate evaluations recorded, by gate and verdict", labels=["gate", "verdict"]
        )
        for row in GateEvaluation.objects.order_by().values("gate", "verdict").annotate(n=Count("id")):
            verdicts.add_metric([row["gate"], row["verdict"]], row["n"])
        yield verdicts
        unpublished = OutboxMessage.objects.filter(published_at__isnull=True)
        pending = unpublished.aggregate(n=Count("id"), oldest=Min("created_at"))
        yield GaugeMetricFamily("fogdeck_outbox_pending", "outbox messages not yet published", value=pending["n"])
        age = (timezone.now() - pending["oldest"]).total_seconds() if pending["oldest"] else 0.0
        yield GaugeMetricFamily(
            "fogdeck_outbox_oldest_pending_age_seconds", "age of the oldest unpublished outbox message", value=age
        )
