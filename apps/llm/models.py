"""The ledger (``UsageRecord``), API keys for the OpenAI-compatible endpoint, and
per-user monthly budgets."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiKey(models.Model):
    """A key for ``/v1/chat/completions``. Staff create it in admin; the key itself is
    shown once and only its SHA-256 is stored (it has 256 bits of entropy, so a
    fast hash is enough: there is nothing to brute-force).

    Web processes remember keys they have looked up; saving or deleting a key
    changes a version number in Redis that every request checks, so a revoked
    key is refused by every process from its next request on (``apps.llm.keys``)."""

    name = models.CharField(max_length=100)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="llm_api_keys",
                             help_text="Calls made with this key are charged to this user as well.")
    prefix = models.CharField(max_length=16, editable=False, help_text="First characters, to recognise the key.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    monthly_budget_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True,
                                             help_text="Empty means no limit for this key.")
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="requests per minute",
        help_text="Rate limit on /v1/. Empty: the site default (LLM_API_KEY_DEFAULT_RPM, unset means unlimited); "
                  "0: unlimited for this key.")
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="tokens per minute",
        help_text="Model tokens (prompt and completion, embeddings' inputs) per minute on /v1/, counted when a call "
                  "ends: a request is refused while more than a minute's worth is spent. Empty: the site default "
                  "(LLM_API_KEY_DEFAULT_TPM, unset means unlimited); 0: unlimited for this key.")
    is_active = models.BooleanField(default=True, help_text="Unticking it revokes the key in every web process at "
                                                            "once.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class UserBudget(models.Model):
    """A user's monthly LLM spending limit (overrides ``LLM_DEFAULT_USER_MONTHLY_BUDGET_USD``)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="llm_budget")
    monthly_limit_usd = models.DecimalField(max_digits=12, decimal_places=4)

    def __str__(self) -> str:
        return f"{self.user}: ${self.monthly_limit_usd}/month"


class UsageRecord(models.Model):
    """One call through the proxy. The id is assigned when the call starts, so
    callers get it at once even though rows are written in batches."""

    class Outcome(models.TextChoices):
        OK = "ok", "ok"
        PARTIAL = "partial", "partial (failed after the first token)"
        CANCELLED = "cancelled", "cancelled by the client"
        ERROR = "error", "error (no answer)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    route = models.CharField(max_length=50, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="llm_usage")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage")
    provider = models.CharField(max_length=50)
    model = models.CharField(max_length=100, db_index=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(default=False, help_text="Counted by us, not reported by the provider.")
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    latency_ms = models.FloatField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True, verbose_name="time to first token (ms)")
    cache_hit = models.BooleanField(default=False)
    streamed = models.BooleanField(default=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.OK, db_index=True)
    error = models.TextField(blank=True)
    fallbacks = models.PositiveSmallIntegerField(default=0, help_text="Providers tried before the one that answered.")
    anonymous = models.BooleanField(
        default=False, help_text="Asked by a reader who was not signed in (no API key either): counted against "
                                 "LLM_ANONYMOUS_MONTHLY_BUDGET_USD. Background work (no reader at all) is not.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "created_at"], name="llm_usage_user_time"),
            models.Index(fields=["api_key", "created_at"], name="llm_usage_key_time"),
        ]

    def __str__(self) -> str:
        return f"{self.route} {self.provider}/{self.model} {self.outcome} ${self.cost_usd}"


# Saving or deleting a key (or deactivating its user) bumps the key version in Redis, and
# saving or deleting a user's budget the budgets' version.
from apps.llm import budgets as _budgets  # noqa: E402,F401
from apps.llm import keys as _keys  # noqa: E402,F401
