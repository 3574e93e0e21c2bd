"""Documents API: visibility for readers, staff-only writes, chunks, filters, limits."""

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from apps.documents.models import Document
from apps.documents.services import embed_document
from tests.factories.documents import DocumentFactory, StaffFactory, UserFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/documents"


@pytest.fixture
def canaries():
    author = UserFactory()
    return {
        "public": DocumentFactory(title="public canary"),
        "internal": DocumentFactory(title="internal canary", visibility="internal"),
        "private": DocumentFactory(title="private canary", visibility="private", author=author),
        "draft": DocumentFactory(title="draft canary", status="draft"),
        "author": author,
    }


def client_for(user=None):
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def titles(response):
    assert response.status_code == 200, response.content
    return {d["title"] for d in response.json()["results"]}


def test_readers_see_only_what_the_visibility_rule_allows(canaries):
    assert titles(client_for().get(URL)) == {"public canary"}
    assert titles(client_for(UserFactory()).get(URL)) == {"public canary", "internal canary"}
    assert titles(client_for(canaries["author"]).get(URL)) == {"public canary", "internal canary", "private canary"}
    assert len(titles(client_for(StaffFactory()).get(URL))) == 4

    for hidden in ("internal", "private", "draft"):
        response = client_for().get(f"{URL}/{canaries[hidden].pk}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert client_for().get(f"{URL}/{canaries[hidden].pk}/chunks").status_code == 404


def test_retrieve_includes_the_body_and_chunks_are_listed_in_order():
    document = DocumentFactory(title="Chunky", body="\n\n".join(f"## Part {i}\n\nText of part {i}." for i in range(3)))
    embed_document(document.pk)
    detail = client_for().get(f"{URL}/{document.pk}").json()
    assert detail["body"].startswith("## Part 0") and detail["embedding_status"] == "ready"
    assert detail["chunk_count"] == 3 and detail["embedding_error"] == ""
    chunks = client_for().get(f"{URL}/{document.pk}/chunks").json()
    assert chunks["count"] == 3
    assert [c["heading_path"] for c in chunks["results"]] == ["Part 0", "Part 1", "Part 2"]
    assert chunks["results"][1]["text"] == "Text of part 1." and chunks["results"][1]["has_embedding"] is True


def test_filter_by_tag_and_status():
    DocumentFactory(title="tagged", tags=["ops", "db"])
    DocumentFactory(title="other", tags=["chat"])
    DocumentFactory(title="a draft", tags=["ops"], status="draft")
    staff = client_for(StaffFactory())
    assert titles(staff.get(URL, {"tag": "ops"})) == {"tagged", "a draft"}
    assert titles(staff.get(URL, {"tag": "ops", "status": "published"})) == {"tagged"}
    response = staff.get(URL, {"status": "bogus"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "validation_error"


def test_only_staff_can_write(canaries):
    payload = {"title": "New doc", "body": "Hello"}
    anonymous = client_for().post(URL, payload, format="json")
    assert anonymous.status_code == 401
    reader = client_for(UserFactory()).post(URL, payload, format="json")
    assert reader.status_code == 403 and reader.json()["error"]["code"] == "permission_denied"
    assert client_for(canaries["author"]).delete(f"{URL}/{canaries['private'].pk}").status_code == 403
    assert not Document.objects.filter(title="New doc").exists()


def test_staff_create_update_and_delete():
    staff_user = StaffFactory()
    staff = client_for(staff_user)
    created = staff.post(URL, {"title": "API made", "body": "# Hi\n\nThere.", "tags": ["api"],
                               "status": "published"}, format="json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert data["slug"] == "api-made" and data["author"] == staff_user.username
    assert data["embedding_status"] == "pending" and data["published_at"]

    updated = staff.patch(f"{URL}/{data['id']}", {"body": "Changed."}, format="json")
    assert updated.status_code == 200 and updated.json()["body"] == "Changed."
    duplicate = staff.post(URL, {"title": "Other", "slug": "api-made"}, format="json")
    assert duplicate.status_code == 400 and "slug" in duplicate.json()["error"]["details"]

    assert staff.delete(f"{URL}/{data['id']}").status_code == 204
    assert not Document.objects.filter(pk=data["id"]).exists()


@override_settings(DOCUMENT_MAX_BODY_BYTES=2000)
def test_a_body_above_the_limit_is_a_clear_validation_error():
    staff = client_for(StaffFactory())
    response = staff.post(URL, {"title": "Too big", "body": "x" * 2001}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "The body is 2,001 bytes; the maximum is 2,000 bytes" in error["message"]
    empty = staff.post(URL, {"title": "Empty is fine", "body": ""}, format="json")
    assert empty.status_code == 201


def test_a_body_with_a_lone_surrogate_is_a_validation_error():
    staff = client_for(StaffFactory())
    response = staff.post(URL, '{"title": "Broken", "body": "half a pair: \\ud83d."}', content_type="application/json")
    assert response.status_code == 400, response.content  # was a 500 from the body size check
    assert response.json()["error"]["message"] == "body: Surrogate characters are not allowed: U+D83D."
    assert not Document.objects.filter(title="Broken").exists()


def test_a_limit_beyond_the_largest_page_gets_the_largest_page():
    DocumentFactory.create_batch(3)
    anonymous = client_for()
    # Past PostgreSQL's bigint this limit reached the query's LIMIT: a 500 for anyone.
    for limit in ("99999999999999999999", "101"):
        response = anonymous.get(URL, {"limit": limit, "offset": "1"})
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["count"] == 3 and len(body["results"]) == 2
    page = anonymous.get(URL, {"limit": "2"}).json()
    assert len(page["results"]) == 2 and "limit=2" in page["next"]


def test_a_limit_or_offset_that_is_not_a_whole_number_in_range_is_a_400_naming_it():
    """DRF serves the first page for any of these, so a client's bug looked like missing data;
    an offset past PostgreSQL's bigint was a 500."""
    DocumentFactory.create_batch(3)
    anonymous = client_for()
    for params, name in [({"offset": "null"}, "offset"), ({"offset": "-1"}, "offset"),
                         ({"offset": str(2**63)}, "offset"), ({"limit": "0"}, "limit"),
                         ({"limit": "2.5"}, "limit"), ({"limit": "-3", "offset": "1"}, "limit")]:
        response = anonymous.get(URL, params)
        assert response.status_code == 400, (params, response.content)
        error = response.json()["error"]
        assert error["code"] == "validation_error" and list(error["details"]) == [name], params
    assert anonymous.get(URL, {"limit": "", "offset": ""}).json()["count"] == 3  # empty = not given
    document = Document.objects.first()
    assert client_for().get(f"{URL}/{document.pk}/chunks", {"offset": "-5"}).status_code == 400


def test_a_document_without_an_author_lists_it_as_null():
    DocumentFactory(author=None)
    assert client_for().get(URL).json()["results"][0]["author"] is None
