"""The backend pattern shared by every pluggable provider (LLM chat, embeddings).

Like Django's ``CACHES``: a setting maps aliases to ``{"BACKEND": dotted path,
"OPTIONS": {...}}``; the class is resolved with ``import_string`` and unknown
options are a configuration error that names the setting and alias.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string


def backend_class(setting: str, alias: str, config: dict, base: type) -> type:
    """Validate ``config`` (BACKEND + optional OPTIONS) and import its BACKEND class."""
    unknown = set(config) - {"BACKEND", "OPTIONS"}
    if unknown or "BACKEND" not in config:
        raise ImproperlyConfigured(f"{setting}[{alias!r}] needs BACKEND and optional OPTIONS, got {sorted(config)}")
    try:
        cls = import_string(config["BACKEND"])
    except ImportError as exc:
        raise ImproperlyConfigured(f"{setting}[{alias!r}]: cannot import {config['BACKEND']!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ImproperlyConfigured(f"{setting}[{alias!r}]: {config['BACKEND']!r} is not a {base.__name__}")
    return cls


def reject_unknown_options(setting: str, alias: str, cls: type, options: dict, accepted: Iterable[str]) -> None:
    unknown = set(options) - set(accepted)
    if unknown:
        raise ImproperlyConfigured(
            f"{setting}[{alias!r}] ({cls.__name__}): unknown OPTIONS {sorted(unknown)}; accepted: {sorted(accepted)}"
        )
