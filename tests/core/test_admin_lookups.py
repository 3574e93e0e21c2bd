"""Django admin list pages: a filter value the database or Python cannot take is the admin's
own "invalid lookup" answer (a redirect with ?e=1), not a 500."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", [
    "/admin/llm/usagerecord/?created_at__year=99999999999",  # the date hierarchy: OverflowError
    "/admin/llm/usagerecord/?created_at__year=2026&created_at__month=99999999999",
    "/admin/documents/document/?tags__contains=%00",  # PostgreSQL cannot hold a NUL: DataError
    "/admin/chat/conversation/?title=%00",
    "/admin/auth/user/?date_joined__year=99999999999",  # Django's own admins too
    "/admin/auth/user/?username=%00",
    "/admin/auth/group/?name=%00",
])
def test_an_impossible_filter_is_the_admins_invalid_lookup_redirect(admin_client, url):
    response = admin_client.get(url)
    assert response.status_code == 302 and response["Location"].endswith("?e=1"), response.status_code
    assert admin_client.get(response["Location"]).status_code == 200  # the list, with Django's notice
