from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from apps.llm.models import ApiKey, UserBudget
from apps.llm.services import api_key_create


class LLMUserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"llm-user-{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.django.Password("pw-for-tests-1")


class LLMStaffFactory(LLMUserFactory):
    username = factory.Sequence(lambda n: f"llm-staff-{n}")
    is_staff = True
    is_superuser = True


def make_api_key(*, user=None, monthly_budget_usd=None, name="test key") -> tuple[ApiKey, str]:
    """An API key made the way staff make one; returns (key, raw key)."""
    return api_key_create(name=name, user=user or LLMUserFactory(), monthly_budget_usd=monthly_budget_usd)


class UserBudgetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = UserBudget

    user = factory.SubFactory(LLMUserFactory)
    monthly_limit_usd = Decimal("1.00")
