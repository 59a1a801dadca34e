from __future__ import annotations

from rest_framework.routers import DefaultRouter

from .views import WebhookViewSet

router = DefaultRouter(trailing_slash=True)
router.register("webhooks", WebhookViewSet, basename="webhook")

urlpatterns = router.urls
