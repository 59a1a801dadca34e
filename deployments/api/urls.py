from __future__ import annotations

from rest_framework.routers import DefaultRouter

from .views import DeploymentViewSet

router = DefaultRouter(trailing_slash=True)
router.register("deployments", DeploymentViewSet, basename="deployment")

urlpatterns = router.urls
