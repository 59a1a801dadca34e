from __future__ import annotations

from outbox.models import RejectedMessageCount


def bridge_counters() -> dict[str, object]:
    """Device messages the MQTT bridge rejected, by reason (informational: not a health failure)."""
    try:
        rows = list(RejectedMessageCount.objects.values_list("reason", "count"))
    except Exception as exc:  # the database probe reports the outage itself
        return {"error": type(exc).__name__}
    return {"rejected": dict(rows), "rejected_total": sum(count for _, count in rows)}
