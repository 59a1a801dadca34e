from __future__ import annotations

from django.urls import path

from .views import ResolveView

urlpatterns = [path("endpoints/resolve/", ResolveView.as_view(), name="endpoints-resolve")]
