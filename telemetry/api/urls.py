from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from .views import DriftAlertViewSet, ReferenceProfileView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False  # fleet's router already serves the API root
router.register("drift/alerts", DriftAlertViewSet, basename="drift-alert")

urlpatterns = [
    *router.urls,
    path(
        "models/<int:model_id>/versions/<int:number>/reference-profile/",
        ReferenceProfileView.as_view(),
        name="reference-profile",
    ),
]
