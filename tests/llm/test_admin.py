"""Staff see the ledger with totals and a chart, and create API keys that are shown once."""

from decimal import Decimal

import pytest
from django.urls import reverse

from apps.llm.models import ApiKey, UsageRecord
from apps.llm.services import hash_api_key
from tests.factories.llm import LLMStaffFactory, LLMUserFactory


@pytest.fixture
def staff_client(client):
    staff = LLMStaffFactory()
    client.force_login(staff)
    return client


def usage(**kwargs):
    defaults = {"route": "chat", "provider": "primary", "model": "fake-model", "prompt_tokens": 10,
                "completion_tokens": 5, "cost_usd": Decimal("0.001")}
    return UsageRecord.objects.create(**{**defaults, **kwargs})


@pytest.mark.django_db
def test_ledger_list_shows_totals_per_feature_user_model_and_a_chart(staff_client):
    alice = LLMUserFactory(username="alice")
    usage(user=alice)
    usage(user=alice, route="enrich", model="other-model", cost_usd=Decimal("0.002"))
    usage(outcome="partial", cost_usd=Decimal("0.0005"))
    response = staff_client.get(reverse("admin:llm_usagerecord_changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="llm-total-cost">$0.003500' in page
    assert "Per feature (route)" in page and "enrich" in page and "alice" in page and "other-model" in page
    assert "<svg" in page and "<rect" in page

    filtered = staff_client.get(reverse("admin:llm_usagerecord_changelist"), {"route": "enrich"})
    assert 'id="llm-total-cost">$0.002000' in filtered.content.decode()
    partial = staff_client.get(reverse("admin:llm_usagerecord_changelist"), {"outcome": "partial"})
    assert 'id="llm-total-cost">$0.000500' in partial.content.decode()


@pytest.mark.django_db
def test_staff_create_an_api_key_shown_once_and_stored_hashed(staff_client):
    owner = LLMUserFactory()
    response = staff_client.post(reverse("admin:llm_apikey_add"),
                                 {"name": "ci bot", "user": owner.pk, "monthly_budget_usd": "5", "is_active": "on"},
                                 follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    raw = next(word for m in shown for word in m.split() if word.startswith("qk_"))
    key = ApiKey.objects.get(name="ci bot")
    assert key.key_hash == hash_api_key(raw) and raw not in (key.key_hash, key.prefix)
    assert raw.startswith(key.prefix)
    again = staff_client.get(reverse("admin:llm_apikey_change", args=[key.pk]))
    assert raw not in again.content.decode()


@pytest.mark.django_db
def test_api_key_list_shows_this_months_spend(staff_client):
    from tests.factories.llm import make_api_key

    key, _ = make_api_key(name="reporting", monthly_budget_usd=Decimal("10"))
    usage(api_key=key, cost_usd=Decimal("0.25"))
    usage(api_key=key, cost_usd=Decimal("0.50"))
    page = staff_client.get(reverse("admin:llm_apikey_changelist")).content.decode()
    assert "reporting" in page and "0.75" in page
