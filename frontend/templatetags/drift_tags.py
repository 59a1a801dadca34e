from __future__ import annotations

from typing import Any

from django import template

from frontend.drift_panel import drift_alerts_context

register = template.Library()


@register.inclusion_tag("frontend/_drift_alerts.html")
def drift_alerts() -> dict[str, Any]:
    """The drift panel in one line: `{% load drift_tags %}{% drift_alerts %}`."""
    return drift_alerts_context()
