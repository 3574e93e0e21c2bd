"""Reading LLM_PROVIDERS, LLM_ROUTES and LLM_PRICES, once per process.

Route shape (``config/settings/base.py``)::

    LLM_ROUTES = {
        "chat": {
            "providers": ["openai", {"provider": "anthropic", "model": "claude-sonnet-4-5",
                                     "params": {"temperature": 0.3}}, "extractive"],
            "params": {"temperature": 0.2},   # model params for every link of the chain
            "max_tokens": 800,                # max output tokens (callers may ask for fewer)
            "context_window": 8192,           # what chat trims its prompt to
            "timeouts": {"first_token": 10},  # optional, over LLM_TIMEOUTS
            "retry": {"attempts": 1},         # optional, over LLM_RETRY
            "cache_ttl": 600,                 # optional, over LLM_CACHE_TTL
        },
    }

Backends are built once per alias (like Django's ``CACHES``) and dropped when a
test overrides the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.core.backends import backend_class

ROUTE_KEYS = {"providers", "params", "max_tokens", "context_window", "timeouts", "retry", "cache_ttl"}
LINK_KEYS = {"provider", "model", "params"}
TIMEOUT_KEYS = {"connect", "first_token", "total"}
RETRY_KEYS = {"attempts", "backoff_base", "backoff_max", "max_retry_after"}
BREAKER_KEYS = {"failure_threshold", "cooldown"}


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_token: float
    total: float


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int  # retries after the first try, per provider
    backoff_base: float
    backoff_max: float
    max_retry_after: float  # a longer Retry-After moves on to the next provider


@dataclass(frozen=True)
class ChainLink:
    provider: str
    model: str | None = None
    params: dict = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """The model this link calls: its own, else its provider's default."""
        return self.model or get_provider(self.provider).default_model


@dataclass(frozen=True)
class RouteConfig:
    """One feature's route: what chat and enrichment read for prompt sizing."""

    name: str
    chain: tuple[ChainLink, ...]
    params: dict
    max_tokens: int
    context_window: int
    timeouts: Timeouts
    retry: RetryPolicy
    cache_ttl: int

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens left for the prompt once the answer's ``max_tokens`` are reserved."""
        return max(0, self.context_window - self.max_tokens)


def _check_keys(where: str, given: dict, allowed: set) -> None:
    unknown = set(given) - allowed
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")


@cache
def route_config(name: str) -> RouteConfig:
    """The configuration of route ``name``; ``LookupError`` if there is no such route."""
    routes = settings.LLM_ROUTES
    if name not in routes:
        raise LookupError(f"No LLM route {name!r}; configured: {sorted(routes)}")
    raw = routes[name]
    _check_keys(f"LLM_ROUTES[{name!r}]", raw, ROUTE_KEYS)
    chain = []
    for link in raw.get("providers") or []:
        if isinstance(link, str):
            link = {"provider": link}
        _check_keys(f"LLM_ROUTES[{name!r}] provider", link, LINK_KEYS)
        if link["provider"] not in settings.LLM_PROVIDERS:
            raise ImproperlyConfigured(f"LLM_ROUTES[{name!r}] names unknown provider {link['provider']!r}")
        chain.append(ChainLink(provider=link["provider"], model=link.get("model"), params=dict(link.get("params", {}))))
    if not chain:
        raise ImproperlyConfigured(f"LLM_ROUTES[{name!r}] has no providers")
    timeouts = {**settings.LLM_TIMEOUTS, **raw.get("timeouts", {})}
    _check_keys(f"LLM_ROUTES[{name!r}] timeouts", timeouts, TIMEOUT_KEYS)
    retry = {**settings.LLM_RETRY, **raw.get("retry", {})}
    _check_keys(f"LLM_ROUTES[{name!r}] retry", retry, RETRY_KEYS)
    return RouteConfig(
        name=name,
        chain=tuple(chain),
        params=dict(raw.get("params", {})),
        max_tokens=int(raw.get("max_tokens", 1024)),
        context_window=int(raw.get("context_window", 8192)),
        timeouts=Timeouts(**{k: float(v) for k, v in timeouts.items()}),
        retry=RetryPolicy(attempts=int(retry["attempts"]), backoff_base=float(retry["backoff_base"]),
                          backoff_max=float(retry["backoff_max"]), max_retry_after=float(retry["max_retry_after"])),
        cache_ttl=int(raw.get("cache_ttl", settings.LLM_CACHE_TTL)),
    )


def route_names() -> list[str]:
    return list(settings.LLM_ROUTES)


@cache
def get_provider(alias: str):
    """The backend instance for ``alias`` (one per process)."""
    try:
        config = settings.LLM_PROVIDERS[alias]
    except KeyError:
        raise ImproperlyConfigured(f"No LLM provider {alias!r} in LLM_PROVIDERS") from None
    from apps.llm.backends.base import ChatBackend

    backend_cls = backend_class("LLM_PROVIDERS", alias, config, ChatBackend)
    return backend_cls(alias=alias, options=config.get("OPTIONS", {}))


@cache
def breaker_settings() -> dict:
    merged = {"failure_threshold": 3, "cooldown": 30.0, **settings.LLM_BREAKER}
    _check_keys("LLM_BREAKER", merged, BREAKER_KEYS)
    return merged


def price(model: str) -> tuple[Decimal, Decimal] | None:
    """(input, output) USD per 1M tokens for ``model``, or None if unpriced."""
    entry = settings.LLM_PRICES.get(model)
    if entry is None:
        return None
    return Decimal(str(entry["input"])), Decimal(str(entry["output"]))


def clear_caches(**kwargs) -> None:
    """Forget built routes/backends (connected to ``setting_changed``)."""
    if kwargs.get("setting") not in (None, "LLM_ROUTES", "LLM_PROVIDERS", "LLM_TIMEOUTS", "LLM_RETRY",
                                     "LLM_CACHE_TTL", "LLM_BREAKER"):
        return
    route_config.cache_clear()
    get_provider.cache_clear()
    breaker_settings.cache_clear()
