from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from django.views.defaults import page_not_found

from .errors import error_body
from .health import bridge_counters, run_checks


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when every backend answers; 503 naming the ones that don't. No secrets, no auth (for probes)."""
    checks = run_checks()
    down = [name for name, result in checks.items() if not result["ok"]]
    body = {"status": "down" if down else "ok", "down": down, "checks": checks, "bridge": bridge_counters()}
    return JsonResponse(body, status=503 if down else 200)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404 for a URL that matches no route: the API's error body under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(404, "not_found", "Not found.", []), status=404)
    return page_not_found(request, exception)
