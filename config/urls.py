from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from accounts.views import admin_login
from core.api_root import ApiRootView
from core.views import livez, readyz
from stack.metrics_view import MetricsView
from stack.views import healthz

api_v1 = [
    path("", ApiRootView.as_view(), name="api-root"),
    path("", include("fleet.api.urls")),
    path("", include("audit.api.urls")),
    path("", include("deployments.api.urls")),
    path("", include("models_registry.api.urls")),
    path("", include("telemetry.api.urls")),
    path("", include("endpoints.api.urls")),
    path("", include("webhooks.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema", template_name="core/redoc.html"), name="api-redoc"),
]

# an unmatched URL under /api/ answers with the API's error body, not an HTML page
handler404 = "core.views.not_found"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("livez", livez, name="livez"),
    path("readyz", readyz, name="readyz"),
    path("metrics", MetricsView.as_view(), name="metrics"),
    path("admin/login/", admin_login),  # the admin's own login view, behind the sign-in throttle
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("", include("frontend.urls")),
]
