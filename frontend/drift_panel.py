"""The dashboard's drift panel: open drift alerts ("retraining needed") with the features that moved most.

The overview view adds `drift_alerts_context()` to its context and its template includes
`frontend/_drift_alerts.html`; templates that can't change their view use `{% load drift_tags %}{% drift_alerts %}`.
"""

from __future__ import annotations

from typing import Any

from telemetry.models import DriftAlert

PANEL_ALERTS = 10


def drift_alerts_context(limit: int = PANEL_ALERTS) -> dict[str, Any]:
    """`drift_alerts` (the newest open alerts, with model, version and site loaded) and `drift_open_count`."""
    open_alerts = DriftAlert.objects.open()
    return {
        "drift_alerts": list(
            open_alerts.select_related("version__model", "site").order_by("-opened_at", "-id")[:limit]
        ),
        "drift_open_count": open_alerts.count(),
    }
