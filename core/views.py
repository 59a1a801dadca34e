from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from django.views.defaults import page_not_found

from .errors import error_body
from .health import run_checks


@require_GET
def livez(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers HTTP. Checks no backend, so an outage of one never gets a healthy web
    container restarted (Kubernetes' livenessProbe; docker-compose's healthcheck uses /readyz)."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when every backend answers, 503 naming the ones that don't (send it traffic or not)."""
    checks = run_checks()
    down = [name for name, result in checks.items() if not result["ok"]]
    return JsonResponse(
        {"status": "down" if down else "ok", "down": down, "checks": checks}, status=503 if down else 200
    )


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404 for a URL that matches no route: the API's error body under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(404, "not_found", "Not found.", []), status=404)
    return page_not_found(request, exception)
