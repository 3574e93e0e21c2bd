from decimal import Decimal

import factory

from apps.llm.models import ApiKey, UserBudget
from apps.llm.services import api_key_create
from tests.factories.documents import StaffFactory as LLMStaffFactory  # noqa: F401 - re-exported for llm tests
from tests.factories.documents import UserFactory as LLMUserFactory


def make_api_key(*, user=None, monthly_budget_usd=None, name="test key") -> tuple[ApiKey, str]:
    """An API key made the way staff make one; returns (key, raw key)."""
    return api_key_create(name=name, user=user or LLMUserFactory(), monthly_budget_usd=monthly_budget_usd)


class UserBudgetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = UserBudget

    user = factory.SubFactory(LLMUserFactory)
    monthly_limit_usd = Decimal("1.00")
