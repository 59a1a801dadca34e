from __future__ import annotations

from rest_framework.routers import DefaultRouter

from .views import AuditEntryViewSet

router = DefaultRouter(trailing_slash=True)
router.register("audit", AuditEntryViewSet, basename="audit")

urlpatterns = router.urls
