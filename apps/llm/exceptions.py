"""One error family for everything that talks to a language model.

Backends translate provider failures into these; the router decides what each
means for fallback (see ``apps.llm.router``); the HTTP layer maps them onto the
one JSON error envelope (``code`` below is the envelope's ``code``)::

    LLMError
    ├── LLMTimeout              connect / first-token / total timeout   -> fall back
    ├── LLMRateLimited          429 (``retry_after`` seconds if sent)   -> retry, then fall back
    ├── LLMUnavailable          connection refused/reset, 5xx, bad data -> retry, then fall back
    ├── LLMBadRequest           4xx the provider blames on the request  -> no fallback
    │   └── ContextWindowExceeded  prompt too long for the model        -> next provider
    └── BudgetExceeded          monthly USD limit reached (HTTP 429), raised before any call
"""

from __future__ import annotations


class LLMError(Exception):
    """Base of every inference error. ``provider`` is the backend alias, if any."""

    code = "llm_error"
    http_status = 502
    #: May the router try the same provider again (before the first token)?
    retryable = False
    #: Does this failure count against the provider's circuit breaker?
    counts_against_provider = True

    def __init__(self, message: str = "", *, provider: str | None = None, status: int | None = None):
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.provider = provider
        self.status = status

    def __str__(self) -> str:
        where = f"{self.provider}: " if self.provider else ""
        return f"{where}{self.message}"


class LLMTimeout(LLMError):
    """The provider did not answer in time."""

    code = "llm_timeout"
    http_status = 504
    retryable = False  # a hang is not worth waiting for twice; fall back instead


class LLMRateLimited(LLMError):
    """The provider is rate limiting us."""

    code = "llm_rate_limited"
    http_status = 429
    retryable = True

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class LLMUnavailable(LLMError):
    """The provider could not be reached or failed (connection error, 5xx, malformed response)."""

    code = "llm_unavailable"
    http_status = 503
    retryable = True


class LLMBadRequest(LLMError):
    """The provider rejected the request itself (4xx other than 429)."""

    code = "llm_bad_request"
    http_status = 400
    counts_against_provider = False


class ContextWindowExceeded(LLMBadRequest):
    """The prompt does not fit the model's context window."""

    code = "context_window_exceeded"


class BudgetExceeded(LLMError):
    """A monthly budget is exhausted; raised before any provider is called."""

    code = "budget_exceeded"
    http_status = 429
    counts_against_provider = False

    def __init__(self, message: str = "", *, holder: str = "", limit_usd=None, spent_usd=None, resets_at=None):
        super().__init__(message or "Your monthly LLM budget is exhausted.")
        self.holder = holder  # "user" or "api_key"
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.resets_at = resets_at

    def details(self) -> dict:
        return {
            "budget": self.holder,
            "limit_usd": str(self.limit_usd) if self.limit_usd is not None else None,
            "spent_usd": str(self.spent_usd) if self.spent_usd is not None else None,
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
        }
