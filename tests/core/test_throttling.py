"""The API's rate limits (DRF's rates and keys, counted per fixed window in one Redis round trip)."""

import time

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from apps.core import throttling
from tests.factories.documents import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def low_rates(monkeypatch):
    rates = {"user": "3/min", "anon": "2/min"}
    for throttle in (throttling.UserRateThrottle, throttling.AnonRateThrottle):
        monkeypatch.setattr(throttle, "THROTTLE_RATES", rates)
    yield
    for key in cache._cache.get_client(write=True).scan_iter(match=f"*{cache.key_prefix}*throttle_*"):
        cache._cache.get_client(write=True).delete(key)


def test_a_caller_over_its_rate_gets_429_in_the_envelope_with_retry_after(low_rates):
    reader, other = UserFactory(), UserFactory()
    client = APIClient()
    client.force_authenticate(reader)
    statuses = [client.get("/api/v1/chat/conversations").status_code for _ in range(4)]
    refused = client.get("/api/v1/chat/conversations")
    assert statuses == [200, 200, 200, 429] and refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "throttled" and 0 < error["details"]["retry_after"] <= 60
    assert refused["Retry-After"] == str(error["details"]["retry_after"])
    window = int(time.time() // 60)
    counted = [cache.get(f"throttle_user_{reader.pk}:{w}") for w in (window - 1, window)]
    assert max(c or 0 for c in counted) >= 3 and all(isinstance(c, int) for c in counted if c is not None)  # a count

    mine = APIClient()
    mine.force_authenticate(other)
    assert mine.get("/api/v1/chat/conversations").status_code == 200  # per user


def test_anonymous_callers_are_counted_per_address(low_rates):
    anonymous = APIClient(REMOTE_ADDR="203.0.113.7")
    assert [anonymous.get("/api/v1/chat/conversations").status_code for _ in range(3)] == [200, 200, 429]
    assert APIClient(REMOTE_ADDR="203.0.113.8").get("/api/v1/chat/conversations").status_code == 200


def test_a_forwarded_for_header_does_not_make_a_new_caller(low_rates):
    """The address is the connection's, as the ASGI server resolved it (uvicorn reads
    X-Forwarded-For only from the proxies in FORWARDED_ALLOW_IPS): a client naming a new
    X-Forwarded-For per request is still one caller."""
    statuses = [APIClient(REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")
                .get("/api/v1/chat/conversations").status_code for i in range(3)]
    assert statuses == [200, 200, 429]
