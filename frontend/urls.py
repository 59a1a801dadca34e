from __future__ import annotations

import plotly
from django.contrib.auth import views as auth_views
from django.urls import path

from accounts.views import LoginView

from . import device_actions, model_actions, pipeline_views, rollout_views, views, webhook_views

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.overview, name="overview"),
    path("overview/latency/", views.overview_latency, name="overview-latency"),
    path("devices/", views.device_list, name="device-list"),
    path("devices/bulk/", views.device_bulk, name="device-bulk"),
    path("devices/export.csv", views.device_export, name="device-export"),
    path("devices/save-group/", device_actions.device_save_group, name="device-save-group"),
    path("devices/<int:device_id>/", views.device_detail, name="device-detail"),
    path("models/", views.model_list, name="model-list"),
    path("models/<int:model_id>/", views.model_detail, name="model-detail"),
    path("models/<int:model_id>/versions/", views.model_version_upload, name="model-version-upload"),
    path(
        "models/<int:model_id>/versions/<int:number>/<slug:verb>/",
        model_actions.model_version_action,
        name="model-version-action",
    ),
    path("audit/", views.audit_list, name="audit-list"),
    path("webhooks/", webhook_views.webhook_list, name="webhooks-page"),
    path("webhooks/<int:subscription_id>/<str:verb>/", webhook_views.webhook_action, name="webhook-action"),
    path("pipelines/", pipeline_views.pipeline_list, name="pipeline-list-page"),
    path("pipelines/<int:pipeline_id>/", pipeline_views.pipeline_detail, name="pipeline-detail-page"),
    # "rollouts-page", not "rollout-list": that name is the API router's /api/v1/rollouts/
    path("rollouts/", rollout_views.rollout_list, name="rollouts-page"),
    path("rollouts/new/", rollout_views.rollout_new, name="rollout-new"),
    path("rollouts/<int:rollout_id>/", rollout_views.rollout_detail, name="rollout-page"),
    path(
        "rollouts/<int:rollout_id>/failed-devices.csv",
        rollout_views.rollout_failed_export,
        name="rollout-failed-export",
    ),
    path("rollouts/<int:rollout_id>/<slug:verb>/", rollout_views.rollout_action, name="rollout-action"),
    path(f"vendor/plotly-{plotly.__version__}.min.js", views.plotly_js, name="plotly-js"),
]
