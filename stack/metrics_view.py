"""`GET /metrics`: Prometheus text for admins, for a scraper holding METRICS_TOKEN, or for an allowed network."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from core import metrics, roles

from .fleet_metrics import FleetStateCollector


def _bearer_matches(request: Request) -> bool:
    expected = settings.METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, presented = header.partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip(), expected)


def _from_allowed_network(request: Request) -> bool:
    if not settings.METRICS_ALLOWED_NETWORKS:
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))  # never X-Forwarded-For: clients set it
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net) for net in settings.METRICS_ALLOWED_NETWORKS)


class MetricsAccess(BasePermission):
    message = "Metrics are for admins, METRICS_TOKEN holders and METRICS_ALLOWED_NETWORKS."

    def has_permission(self, request: Any, view: Any) -> bool:
        if _bearer_matches(request) or _from_allowed_network(request):
            return True
        user = request.user
        if not user or not user.is_authenticated:
            view.check_throttles(request)  # as RolePermission: anonymous guesses meet the anonymous rate
            return False
        return roles.has_role(user, roles.ADMIN)


class MetricsView(APIView):
    permission_classes = [MetricsAccess]

    @extend_schema(exclude=True)  # not part of the REST API: Prometheus' text format
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse(metrics.exposition(state=FleetStateCollector()), content_type=metrics.CONTENT_TYPE_LATEST)
