from django.http import JsonResponse
from django.views.decorators.cache import never_cache

from apps.core.health import run_checks
from apps.core.logging import get_logger

logger = get_logger("quire.health")


@never_cache
def healthz(request):
    """Liveness: the process answers. No dependencies are touched."""
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request):
    """Readiness: 200 when every dependency answers, 503 naming the failures."""
    healthy, checks = run_checks()
    failed = [name for name, result in checks.items() if not result["ok"]]
    body = {"status": "ok" if healthy else "unavailable", "failed": failed, "checks": checks}
    if not healthy:  # Django's own 5xx error line is filtered out (apps.core.logging.not_a_readiness_answer)
        errors = {name: checks[name]["error"] for name in failed if checks[name].get("error")}
        logger.warning("health.not_ready", failed=failed, **({"errors": errors} if errors else {}))
    return JsonResponse(body, status=200 if healthy else 503)
