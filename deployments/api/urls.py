from __future__ import annotations

from rest_framework.routers import DefaultRouter

from .views import DeploymentViewSet, DeviceHistoryViewSet, RolloutViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False  # config/urls.py serves the API root (core/api_root.py)
router.register("deployments", DeploymentViewSet, basename="deployment")
router.register("rollouts", RolloutViewSet, basename="rollout")
# only `devices/{id}/history/` (route name device-history): fleet/api/urls.py registers the rest of `devices`
router.register("devices", DeviceHistoryViewSet, basename="device")

urlpatterns = router.urls
