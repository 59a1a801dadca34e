from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from core.roles import VIEWER, has_role
from fleet.models import ConnectionStatus, Device, Site, Tier


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    """Fleet overview: devices by tier and site, online share, stale heartbeats."""
    if not has_role(request.user, VIEWER):
        raise PermissionDenied
    online = Q(status=ConnectionStatus.ONLINE)
    by_tier = {
        row["tier"]: row
        for row in Device.objects.values("tier").annotate(total=Count("id"), online=Count("id", filter=online))
    }
    tiers = [
        {
            "label": label,
            "total": by_tier.get(value, {}).get("total", 0),
            "online": by_tier.get(value, {}).get("online", 0),
        }
        for value, label in Tier.choices
    ]
    sites = Site.objects.annotate(
        total=Count("devices"), online=Count("devices", filter=Q(devices__status="online"))
    ).order_by("name")
    context = {
        "tiers": tiers,
        "sites": sites,
        "total": Device.objects.count(),
        "online": Device.objects.online().count(),
        "stale": Device.objects.stale().order_by("last_seen")[:20],
    }
    return render(request, "frontend/overview.html", context)
