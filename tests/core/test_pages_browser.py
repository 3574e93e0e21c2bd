import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_home_page_renders_in_chromium(page, live_server):
    page.goto(live_server.url + "/")
    assert page.title().startswith("Quire")
    assert page.locator("a.brand").inner_text() == "Quire"
