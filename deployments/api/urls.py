from __future__ import annotations

from rest_framework.routers import DefaultRouter

from .views import DeploymentViewSet, RolloutViewSet

router = DefaultRouter(trailing_slash=True)
router.register("deployments", DeploymentViewSet, basename="deployment")
router.register("rollouts", RolloutViewSet, basename="rollout")

urlpatterns = router.urls
