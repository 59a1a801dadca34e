from __future__ import annotations

from rest_framework.routers import DefaultRouter

from .views import AuditEntryViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False  # config/urls.py serves the API root (core/api_root.py)
router.register("audit", AuditEntryViewSet, basename="audit")

urlpatterns = router.urls
