from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from .pipeline_views import PipelineVersionViewSet, PipelineViewSet
from .views import ArtifactDownloadView, ModelVersionViewSet, RegisteredModelViewSet, SigningKeysView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False  # config/urls.py serves the API root (core/api_root.py)
router.register("models", RegisteredModelViewSet, basename="model")
router.register(r"models/(?P<model_id>[0-9]+)/versions", ModelVersionViewSet, basename="model-version")
router.register("pipelines", PipelineViewSet, basename="pipeline")
router.register(r"pipelines/(?P<pipeline_id>[0-9]+)/versions", PipelineVersionViewSet, basename="pipeline-version")

urlpatterns = [
    *router.urls,
    path("signing-keys/", SigningKeysView.as_view(), name="signing-keys"),
    path("artifacts/<str:token>/", ArtifactDownloadView.as_view(), name="artifact-download"),
]
