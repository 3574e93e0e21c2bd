"""Real Chromium: type a query on /, see results, open a document."""

import pytest

from tests.factories.search import indexed_document

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_reader_searches_from_home_and_opens_a_document(page, live_server):
    doc = indexed_document(title="Lighthouse keepers", body="# Keepers\n\nThe **keepers** trimmed the lamp wicks nightly.",
                           tags=["history"])
    indexed_document(title="Harbour pilots", body="Pilots guide ships into the harbour.")
    page.goto(live_server.url + "/")
    page.fill("input[name=q]", "lamp wicks")
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**/search?q=lamp+wicks*")
    first = page.locator("article.result").first
    assert first.locator("h3").inner_text() == "Lighthouse keepers"
    assert "wicks" in first.locator("mark").all_inner_texts()
    assert "result" in page.locator("p.count").inner_text()
    first.locator("h3 a").click()
    page.wait_for_url(f"**/d/{doc.slug}/")
    assert page.locator("article.document > h1").inner_text() == "Lighthouse keepers"
    assert page.locator(".body strong").inner_text() == "keepers"
