"""Canary documents: anonymous readers never see internal, private or draft
documents — not in results, facets, similar documents, passages or the API."""

import pytest

from apps.documents.models import Document
from apps.search.services import hybrid_search, retrieve_passages, similar_documents
from tests.factories.documents import StaffFactory, UserFactory
from tests.factories.search import CANARIES, indexed_document, plant_canaries

pytestmark = pytest.mark.django_db

SHARED = "Aurora borealis observations over the northern fjords at night."


@pytest.fixture
def planted():
    return plant_canaries(shared=SHARED, public_title="Public aurora", public_tags=["sky"], canary_tags=True)


@pytest.mark.parametrize("mode", ["hybrid", "keyword", "semantic"])
def test_anonymous_sees_no_canary_in_results_or_facets(planted, mode):
    _, public, canaries = planted
    for name in CANARIES:
        found = hybrid_search(query=f"zq{name}word aurora", user=None, mode=mode)
        assert {r.document_id for r in found.results} <= {public.pk}
        assert not [tag for tag, _ in found.facets if tag.startswith("secret")]
    everything = hybrid_search(query="aurora borealis fjords", user=None, mode=mode, limit=50)
    assert [r.document_id for r in everything.results] == [public.pk]
    assert everything.total == 1


def test_anonymous_gets_no_canary_in_similar_documents_or_passages(planted):
    _, public, canaries = planted
    assert similar_documents(document=public, user=None) == []  # every neighbour is a canary
    for name, canary in canaries.items():
        assert similar_documents(document=canary, user=None) == []  # invisible source: nothing
        passages = retrieve_passages(query=f"zq{name}word aurora", user=None)
        assert {p.document_id for p in passages} == {public.pk}


def test_signed_in_users_see_internal_and_their_own(planted):
    author, public, canaries = planted
    reader = UserFactory()
    seen = {r.document_id for r in hybrid_search(query="aurora", user=reader, mode="keyword").results}
    assert seen == {public.pk, canaries["internal"].pk}
    seen_by_author = {r.document_id for r in hybrid_search(query="aurora", user=author, mode="keyword").results}
    assert seen_by_author == {public.pk, *(c.pk for c in canaries.values())}
    staff_seen = {r.document_id for r in hybrid_search(query="aurora", user=StaffFactory(), mode="keyword").results}
    assert staff_seen == seen_by_author


def test_api_hides_canaries_from_anonymous(planted, client):
    _, public, canaries = planted
    for name in CANARIES:
        body = client.get("/api/v1/search", {"q": f"zq{name}word aurora"}).json()
        assert [r["document_id"] for r in body["results"]] == [public.pk]
        assert "secret" not in str(body["facets"])


def test_pages_hide_canaries_from_anonymous(planted, client):
    _, public, canaries = planted
    page = client.get("/search", {"q": "aurora zqinternalword zqprivateword zqdraftword"}).content.decode()
    assert "Public aurora" in page and "Canary" not in page
    assert "Canary" not in client.get("/").content.decode()
    for canary in canaries.values():
        assert client.get(f"/d/{canary.slug}/").status_code == 404
    assert "Canary" not in client.get(f"/d/{public.slug}/").content.decode()


def test_visibility_and_tag_changes_apply_to_the_next_search():
    from apps.documents.services import document_update, documents_publish, documents_unpublish
    from apps.search.services import SearchFilters

    doc = indexed_document(title="Quokka notes", body="Quokkas live on Rottnest island.", tags=["fauna"])

    def found(**kwargs):
        return [r.document_id for r in hybrid_search(query="quokkas rottnest", user=None, **kwargs).results]

    assert found() == [doc.pk]
    document_update(document=doc, visibility=Document.Visibility.PRIVATE)
    assert found() == []
    document_update(document=doc, visibility=Document.Visibility.PUBLIC)
    documents_unpublish(document_ids=[doc.pk])
    assert found() == []
    documents_publish(document_ids=[doc.pk])
    assert found() == [doc.pk]
    doc.refresh_from_db()
    document_update(document=doc, tags=["island"])
    assert found(filters=SearchFilters(tags=["fauna"])) == []
    assert found(filters=SearchFilters(tags=["island"])) == [doc.pk]
    doc.delete()
    assert found() == []


@pytest.mark.parametrize("private_on_top", [3, 20])  # 20: the 16 checked are all private
def test_passages_keyword_list_is_exact_when_the_best_matches_are_mostly_invisible(monkeypatch, private_on_top):
    """The passages' keyword list checks only the best KEYWORD_OVERFETCH x depth matches for
    visibility; when too few of those are visible it must rank every visible match instead."""
    from apps.search import services

    monkeypatch.setattr(services, "PASSAGE_CANDIDATES", 2)  # limit 1: depth 4, 16 matches checked
    for i in range(private_on_top):  # private matches that outscore every public one
        indexed_document(title=f"Private glacier {i}", body="Glacier glacier glacier moraine. " * 3,
                         visibility=Document.Visibility.PRIVATE)
    public = [indexed_document(title=f"Public note {i}", body=f"A glacier once passed here. Note {i} of rivers.")
              for i in range(3)]
    best = retrieve_passages(query="glacier", user=None, limit=1, mode="keyword")
    staff_best = retrieve_passages(query="glacier", user=StaffFactory(), limit=1, mode="keyword")
    assert [p.document_id for p in best] and best[0].document_id in {d.pk for d in public}
    assert staff_best[0].title.startswith("Private")  # the private ones do outscore the public ones
    every_public = retrieve_passages(query="glacier", user=None, limit=5, mode="keyword")
    assert {p.document_id for p in every_public} == {d.pk for d in public}
