from django.contrib import admin, messages
from django.db.models import Q, Sum
from django.utils import timezone

from apps.core.admin import QuireModelAdmin
from apps.llm.budgets import month_bounds
from apps.llm.models import ApiKey, UsageRecord, UserBudget
from apps.llm.selectors import day_chart, usage_totals
from apps.llm.services import api_key_revoke, new_key_material


@admin.register(UsageRecord)
class UsageRecordAdmin(QuireModelAdmin):
    """The ledger: read-only, filterable, with totals and a cost-per-day chart of the filtered rows."""

    change_list_template = "admin/llm/usagerecord/change_list.html"
    list_display = ("created_at", "route", "user", "api_key", "provider", "model", "prompt_tokens",
                    "completion_tokens", "tokens_estimated", "cost_usd", "latency_ms", "ttft_ms", "cache_hit",
                    "outcome")
    list_filter = ("route", "provider", "model", "outcome", "anonymous", "cache_hit", "tokens_estimated", "streamed",
                   ("created_at", admin.DateFieldListFilter), "api_key")
    search_fields = ("user__username", "model", "error")
    date_hierarchy = "created_at"
    list_select_related = ("user", "api_key")
    list_per_page = 50

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            totals = usage_totals(context["cl"].queryset)
            context["totals"] = totals
            context["chart"] = day_chart(totals["per_day"])
        return response


@admin.register(ApiKey)
class ApiKeyAdmin(QuireModelAdmin):
    """Keys for /v1/ (chat completions, embeddings, models). The key is shown once, right after it is created.
    Unticking "is active", the revoke action and deleting all take effect in every web
    process from its next request (``apps.llm.keys``)."""

    list_display = ("name", "prefix", "user", "monthly_budget_usd", "spent_this_month", "requests_per_minute",
                    "tokens_per_minute", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name", "prefix", "user__username")
    readonly_fields = ("prefix", "created_at")
    fields = ("name", "user", "monthly_budget_usd", "requests_per_minute", "tokens_per_minute", "is_active", "prefix",
              "created_at")
    list_select_related = ("user",)
    actions = ("revoke_selected",)

    @admin.action(description="Revoke selected API keys (refused at once)")
    def revoke_selected(self, request, queryset):
        revoked = 0
        for key in queryset.filter(is_active=True):
            api_key_revoke(api_key=key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)

    def get_queryset(self, request):
        start, _ = month_bounds()
        return super().get_queryset(request).annotate(
            spent=Sum("usage__cost_usd", filter=Q(usage__created_at__gte=start)))

    @admin.display(description="spent this month (USD)", ordering="spent")
    def spent_this_month(self, obj):
        return obj.spent or 0

    def save_model(self, request, obj, form, change):
        if not change:
            raw, obj.prefix, obj.key_hash = new_key_material()
            obj.created_at = timezone.now()
            super().save_model(request, obj, form, change)
            self.message_user(
                request,
                f"The API key for “{obj.name}” is {raw} — copy it now: it is stored hashed and will not be shown "
                "again.",
                messages.WARNING,
            )
            return
        super().save_model(request, obj, form, change)


@admin.register(UserBudget)
class UserBudgetAdmin(QuireModelAdmin):
    list_display = ("user", "monthly_limit_usd")
    search_fields = ("user__username",)
