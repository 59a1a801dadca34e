"""`GET /api/v1/`: every resource of the API, by name, as absolute URLs (NetBox's API root).

The URLs are written out rather than reversed: several API route names (`device-list`, …) are also UI
page names, and reversing them gave the UI page (`/devices/`) instead of the API's."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

# name -> path under /api/v1/; a new resource is added here (tests/core/test_api_root.py checks that every
# list route of the schema appears)
RESOURCES = {
    "sites": "sites/",
    "devices": "devices/",
    "devices-export": "devices/export/",
    "groups": "groups/",
    "models": "models/",
    "pipelines": "pipelines/",
    "deployments": "deployments/",
    "rollouts": "rollouts/",
    "telemetry-series": "telemetry/series/",
    "drift-alerts": "drift/alerts/",
    "endpoints-resolve": "endpoints/resolve/",
    "webhooks": "webhooks/",
    "audit": "audit/",
    "signing-keys": "signing-keys/",
    "schema": "schema/",
    "docs": "docs/",
    "redoc": "redoc/",
}


class ApiRootView(APIView):
    """The API's resources, each with its URL."""

    @extend_schema(responses={200: inline_serializer("ApiRoot", {name: serializers.URLField() for name in RESOURCES})})
    def get(self, request: Request) -> Response:
        base = request.build_absolute_uri("/api/v1/")
        return Response({name: base + path for name, path in RESOURCES.items()})
