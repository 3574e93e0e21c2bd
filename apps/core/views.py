from django.conf import settings
from django.http import JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django_prometheus.exports import ExportToDjangoView

from apps.core.exceptions import envelope
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


@never_cache
def metrics(request):
    """Prometheus metrics. With ``METRICS_TOKEN`` set, only for ``Authorization: Bearer <token>``
    (Prometheus: ``authorization: {credentials: ...}`` in the scrape config): request rates, LLM
    spend per route and model, budget refusals are nobody else's business."""
    token = settings.METRICS_TOKEN
    if token and not constant_time_compare(request.headers.get("Authorization", ""), f"Bearer {token}"):
        response = JsonResponse(envelope("not_authenticated", "Send the metrics token as 'Authorization: Bearer "
                                         "<METRICS_TOKEN>'.", request=request), status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return ExportToDjangoView(request)
