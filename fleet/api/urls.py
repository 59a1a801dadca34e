from __future__ import annotations

from rest_framework.routers import DefaultRouter

from .views import DeviceViewSet, GroupViewSet, SiteViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False  # config/urls.py serves the API root (core/api_root.py)
router.register("sites", SiteViewSet, basename="site")
router.register("devices", DeviceViewSet, basename="device")
router.register("groups", GroupViewSet, basename="group")

urlpatterns = router.urls
