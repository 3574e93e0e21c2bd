"""System checks of the proxy's settings (``manage.py check``; every command runs them)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register


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
