"""System checks of the proxy's settings (``manage.py check``; every command runs them)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured


@register(Tags.compatibility)
def check_api_embedding_aliases(app_configs=None, **kwargs) -> list[Error]:
    """Each alias ``POST /v1/embeddings`` serves is an ``EMBEDDING_BACKENDS`` alias."""
    known = set(getattr(settings, "EMBEDDING_BACKENDS", {}))
    return [
        Error(f"LLM_API_EMBEDDING_ALIASES names {alias!r}, which EMBEDDING_BACKENDS does not define.",
              hint=f"Use one of {sorted(known)}, or leave the setting empty to serve no embeddings.",
              id="quire.llm.E001")
        for alias in settings.LLM_API_EMBEDDING_ALIASES if alias not in known
    ]


@register(Tags.security, deploy=True)
def check_anonymous_spend_bounded(app_configs=None, **kwargs) -> list[Warning]:
    """``check --deploy``: readers who are not signed in can chat through a priced model with no
    monthly limit on what they spend together (the per-minute limits bound the rate only)."""
    from apps.llm.conf import price, route_config

    if settings.LLM_ANONYMOUS_MONTHLY_BUDGET_USD is not None:
        return []
    try:
        chain = route_config(settings.CHAT_ROUTE).chain
        models = [link.model_name for link in chain]
    except (LookupError, ImproperlyConfigured):  # a route or provider the proxy itself reports
        return []
    priced = [model for model in models if model and price(model) is not None]
    if not priced:
        return []
    return [Warning(
        f"Readers who are not signed in can chat through {priced[0]!r}, priced in LLM_PRICES, with no monthly "
        f"limit on what they spend together.",
        hint="Set LLM_ANONYMOUS_MONTHLY_BUDGET_USD (e.g. 20): CHAT_ANON_QUESTIONS_PER_MINUTE and its per-address "
             "twin bound the rate, not the month's bill.",
        id="quire.llm.W001",
    )]
