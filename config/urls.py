from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.views import healthz

api_v1 = [
    path("", include("fleet.api.urls")),
    path("", include("audit.api.urls")),
    path("", include("deployments.api.urls")),
    path("", include("models_registry.api.urls")),
    path("", include("telemetry.api.urls")),
    path("", include("endpoints.api.urls")),
    path("", include("webhooks.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]

# an unmatched URL under /api/ answers with the API's error body, not an HTML page
handler404 = "core.views.not_found"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("", include("frontend.urls")),
]
