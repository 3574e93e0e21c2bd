"""Staff admin: list with pipeline state, actions, chunk inline, errors, preview, limits."""

import pytest
from django.test import override_settings
from django.urls import reverse

from apps.documents.models import Document
from apps.documents.services import embed_document
from tests.factories.documents import DocumentFactory, StaffFactory

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:documents_document_changelist")


@pytest.fixture
def staff_client(client):
    client.force_login(StaffFactory())
    return client


def change_url(document):
    return reverse("admin:documents_document_change", args=[document.pk])


def test_list_shows_status_visibility_badge_and_chunk_count(staff_client):
    ready = DocumentFactory(title="Ready doc", body="## A\n\nOne.\n\n## B\n\nTwo.", visibility="internal")
    embed_document(ready.pk)
    DocumentFactory(title="Broken doc", embedding_status="failed", embedding_error="EmbeddingUnavailable: down")
    page = staff_client.get(CHANGELIST).content.decode()
    assert "Ready doc" in page and "Broken doc" in page
    assert 'class="embedding-badge embedding-ready"' in page
    assert 'class="embedding-badge embedding-failed" title="EmbeddingUnavailable: down"' in page
    assert '<td class="field-chunk_count">2</td>' in page
    assert "Internal (signed-in users)" in page

    filtered = staff_client.get(CHANGELIST, {"embedding_status__exact": "failed"}).content.decode()
    assert "Broken doc" in filtered and "Ready doc" not in filtered
    searched = staff_client.get(CHANGELIST, {"q": "Broken"}).content.decode()
    assert "Broken doc" in searched and "Ready doc" not in searched


def test_change_page_shows_error_preview_and_chunks(staff_client):
    failed = DocumentFactory(title="Failing", body="## Heading\n\nSome **bold** text <script>alert(1)</script>",
                             embedding_status="failed", embedding_error="EmbeddingTimeout: no answer in 30s")
    page = staff_client.get(change_url(failed)).content.decode()
    assert "EmbeddingTimeout: no answer in 30s" in page
    assert "<h2>Heading</h2>" in page and "<strong>bold</strong>" in page
    assert "<script>alert(1)</script>" not in page

    ready = DocumentFactory(title="Chunked", body="## One\n\nFirst part.\n\n## Two\n\nSecond part.")
    embed_document(ready.pk)
    page = staff_client.get(change_url(ready)).content.decode()
    assert "Chunks (what search and chat retrieve)" in page
    assert "First part." in page and "Second part." in page
    assert "EmbeddingTimeout" not in page and "Embedding error" not in page


def test_publish_unpublish_and_re_embed_actions(staff_client, django_capture_on_commit_callbacks):
    drafts = [DocumentFactory(status="draft", published_at=None) for _ in range(2)]
    ids = [str(d.pk) for d in drafts]
    staff_client.post(CHANGELIST, {"action": "publish", "_selected_action": ids})
    assert set(Document.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"published"}
    assert all(d.published_at for d in Document.objects.filter(pk__in=ids))

    staff_client.post(CHANGELIST, {"action": "unpublish", "_selected_action": ids[:1]})
    assert Document.objects.get(pk=ids[0]).status == "draft"

    embed_document(drafts[0].pk)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = staff_client.post(CHANGELIST, {"action": "re_embed", "_selected_action": ids}, follow=True)
    assert "Queued 2 document(s) for embedding." in response.content.decode()
    assert len(callbacks) == 1  # one batch task enqueued after commit
    refreshed = Document.objects.get(pk=drafts[0].pk)
    assert refreshed.embedding_status == "pending" and refreshed.content_hash == ""


@override_settings(DOCUMENT_MAX_BODY_BYTES=100)
def test_admin_rejects_a_body_above_the_limit_with_a_clear_message(staff_client):
    add_url = reverse("admin:documents_document_add")
    form = {"title": "Big", "slug": "big", "body": "y" * 101, "summary": "", "tags": "", "status": "draft",
            "visibility": "public", "source": "manual", "external_id": "",
            "chunks-TOTAL_FORMS": "0", "chunks-INITIAL_FORMS": "0"}
    response = staff_client.post(add_url, form)
    assert response.status_code == 200
    assert "The body is 101 bytes; the maximum is 100 bytes" in response.content.decode()
    assert not Document.objects.filter(slug="big").exists()

    form["body"] = "y" * 100
    assert staff_client.post(add_url, form).status_code == 302
    created = Document.objects.get(slug="big")
    assert created.author is not None
