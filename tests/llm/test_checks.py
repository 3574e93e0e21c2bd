"""The proxy's system checks: settings it cannot serve are errors; an unbounded spend is a
deploy warning."""

from decimal import Decimal

from django.core.checks import run_checks

from apps.llm.testing import EXTRACTIVE


def ids(*, deploy: bool = False) -> list[str]:
    return [message.id for message in run_checks(include_deployment_checks=deploy)]


def test_an_alias_the_gateway_cannot_serve_fails_the_system_check(settings):
    settings.LLM_API_EMBEDDING_ALIASES = ["default", "missing"]
    errors = [e for e in run_checks() if e.id == "quire.llm.E001"]
    assert len(errors) == 1 and "'missing'" in errors[0].msg
    settings.LLM_API_EMBEDDING_ALIASES = []
    assert "quire.llm.E001" not in ids()


def test_deploy_check_warns_while_anonymous_readers_can_spend_without_a_monthly_limit(settings):
    settings.LLM_PROVIDERS = {
        "openai": {"BACKEND": "apps.llm.backends.openai.OpenAIChatBackend",
                   "OPTIONS": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k", "model": "gpt-4o-mini"}},
        "extractive": EXTRACTIVE,
    }
    settings.LLM_ROUTES = {**settings.LLM_ROUTES, "chat": {"providers": ["openai", "extractive"]}}
    settings.LLM_ANONYMOUS_MONTHLY_BUDGET_USD = None
    warning = next(m for m in run_checks(include_deployment_checks=True) if m.id == "quire.llm.W001")
    assert "'gpt-4o-mini'" in warning.msg and "LLM_ANONYMOUS_MONTHLY_BUDGET_USD" in warning.hint
    assert "quire.llm.W001" not in ids()  # a deploy check only

    settings.LLM_ANONYMOUS_MONTHLY_BUDGET_USD = Decimal("20")
    assert "quire.llm.W001" not in ids(deploy=True)

    settings.LLM_ANONYMOUS_MONTHLY_BUDGET_USD = None
    settings.LLM_ROUTES = {**settings.LLM_ROUTES, "chat": {"providers": ["extractive"]}}  # costs nothing
    assert "quire.llm.W001" not in ids(deploy=True)
