"""ASGI entry point: HTTP through Django, websockets through Channels (authenticated by session)."""

from __future__ import annotations

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)  # what get_asgi_application() does before making Django's handler

# Django's handler with its middleware run in one thread hop per request (core/handlers.py)
from core.handlers import SyncChainASGIHandler  # noqa: E402 - needs the app registry loaded above

django_asgi_app = SyncChainASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402 - needs the app registry loaded above
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402
from config.urls import urlpatterns  # noqa: E402,F401 - the views' modules now, not at the first request

# What is loaded by now (Django, DRF, every view and serializer: ~150,000 objects) lives as long as the
# process. Frozen, it is no longer walked by each full cyclic collection, which otherwise stalls every
# request in flight (docs/benchmarks.md, "Figures behind the code").
gc.freeze()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
