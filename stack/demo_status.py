"""The demo's console: its one periodic status line, and the banner with the URL and the password.

`manage.py demo` keeps its console quiet (third-party INFO is silenced in settings.LOGGING) so what a
newcomer needs stays on screen: the banner last in start-up and again on Ctrl-C, and every
`--status-every` seconds one line of what the fleet is doing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.db.models import Count
from django.utils import timezone

from deployments.models import Job, JobStatus, Rollout
from fleet.models import Device
from telemetry.models import TelemetrySample

# the order a person reads a job's life in, and the short words the line uses
_JOB_WORDS = {
    JobStatus.QUEUED: "queued",
    JobStatus.IN_PROGRESS: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.REJECTED: "rejected",
    JobStatus.TIMED_OUT: "timed out",
    JobStatus.CANCELED: "canceled",
}


@dataclass(frozen=True)
class DemoStatus:
    at: dt.datetime
    devices_online: int
    devices_total: int
    rollouts_active: int
    jobs: dict[str, int] = field(default_factory=dict)  # JobStatus -> count
    telemetry_per_minute: int = 0


def demo_status(*, now: dt.datetime | None = None) -> DemoStatus:
    """What the status line shows: five cheap counts (each served by an index or a small table)."""
    now = now or timezone.now()
    devices = Device.objects.active()
    jobs = dict(Job.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    return DemoStatus(
        at=now,
        devices_online=devices.online().count(),
        devices_total=devices.count(),
        rollouts_active=Rollout.objects.active().count(),
        jobs=jobs,
        # telemetry_received_idx serves this range
        telemetry_per_minute=TelemetrySample.objects.filter(
            received_at__gt=now - dt.timedelta(minutes=1), received_at__lte=now
        ).count(),
    )


def format_status(status: DemoStatus) -> str:
    """`[demo 06:41:20] devices online 229/240 | rollouts active 1 | jobs running 4, succeeded 12 | telemetry
    1,372 rows/min` — jobs in the order of their life, states with none left out."""
    jobs = ", ".join(f"{word} {status.jobs[s]:,}" for s, word in _JOB_WORDS.items() if status.jobs.get(s))
    return (
        f"[demo {timezone.localtime(status.at, dt.UTC):%H:%M:%S}] "
        f"devices online {status.devices_online:,}/{status.devices_total:,} | "
        f"rollouts active {status.rollouts_active} | "
        f"jobs {jobs or 'none'} | "
        f"telemetry {status.telemetry_per_minute:,} rows/min"
    )


def format_banner(*, url: str, password: str, extra: tuple[str, ...] = ()) -> str:
    """Where to go and how to sign in; printed last in start-up and again when the demo stops."""
    lines = [
        f"Fogdeck demo: {url}/",
        f"  sign in as admin / operator / viewer with password: {password}",
        f"  API docs {url}/api/v1/docs/   admin {url}/admin/   health {url}/healthz",
        "  API token: python manage.py token_create admin --name demo --days 1 (the key is shown once)",
        *extra,
        "  (set DEMO_PASSWORD to choose the password; Ctrl-C stops everything)",
    ]
    return "\n".join(lines)
