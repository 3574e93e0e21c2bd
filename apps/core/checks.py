"""System checks of the core app (``manage.py check``)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def metrics_token_set(app_configs=None, **kwargs):
    """``check --deploy``: /metrics open to anyone who reaches the web port."""
    if settings.METRICS_TOKEN:
        return []
    return [Warning(
        "METRICS_TOKEN is not set: /metrics (request rates, LLM spend per route and model) is readable by "
        "anyone who can reach the web port.",
        hint="Set METRICS_TOKEN and give Prometheus the same bearer token, or block /metrics at the proxy.",
        id="quire.W001",
    )]
