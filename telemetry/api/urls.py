from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from .views import DriftAlertViewSet, ReferenceProfileView, TelemetrySeriesView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False  # config/urls.py serves the API root (core/api_root.py)
router.register("drift/alerts", DriftAlertViewSet, basename="drift-alert")

urlpatterns = [
    *router.urls,
    path("telemetry/series/", TelemetrySeriesView.as_view(), name="telemetry-series"),
    path(
        "models/<int:model_id>/versions/<int:number>/reference-profile/",
        ReferenceProfileView.as_view(),
        name="reference-profile",
    ),
]
