from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from core.health import run_checks
from mqttbridge.health import bridge_counters


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when every backend answers; 503 naming the ones that don't. No secrets, no auth (for probes).
    The bridge's rejected-message counters are informational, never a failure."""
    checks = run_checks()
    down = [name for name, result in checks.items() if not result["ok"]]
    body = {"status": "down" if down else "ok", "down": down, "checks": checks, "bridge": bridge_counters()}
    return JsonResponse(body, status=503 if down else 200)
