"""Semantics with the real all-MiniLM-L6-v2 model, as deployed (ONNX Runtime; marked `model`)."""

import pytest

from apps.llm.embeddings import reset_embedding_backends
from apps.search.services import hybrid_search
from tests.factories.search import indexed_document

pytestmark = [pytest.mark.django_db, pytest.mark.model]


@pytest.fixture
def real_model(settings):
    settings.EMBEDDING_BACKENDS = {"default": {
        "BACKEND": "apps.llm.embeddings.onnx.OnnxBackend", "OPTIONS": {}}}
    reset_embedding_backends()
    yield
    reset_embedding_backends()


@pytest.fixture
def corpus(real_model):
    return {
        "password": indexed_document(
            title="Resetting your password",
            body="Open the settings page, choose Account, then click Recover access to receive a reset link."),
        "bread": indexed_document(title="Sourdough", body="Feed the starter, fold the dough and bake it hot."),
        "weather": indexed_document(title="Storm warning", body="Heavy rain and strong winds are expected tonight."),
        "turbines": indexed_document(title="Tidal turbines",
                                     body="Tidal turbines turn the energy of ocean currents into electricity."),
        "photovoltaic": indexed_document(title="Photovoltaic modules",
                                         body="Sunlight striking silicon cells produces an electric current."),
        "keyword_only": indexed_document(title="Turbine maintenance log",
                                         body="Turbine 4: bearings greased. Next inspection in May."),
    }


def test_a_paraphrase_finds_the_document_semantically_but_not_by_keywords(corpus):
    query = "I can't remember my login credentials"
    semantic = hybrid_search(query=query, user=None, mode="semantic")
    assert semantic.results[0].document_id == corpus["password"].pk
    keyword = hybrid_search(query=query, user=None, mode="keyword")
    assert corpus["password"].pk not in [r.document_id for r in keyword.results]
    hybrid = hybrid_search(query=query, user=None)
    assert hybrid.results[0].document_id == corpus["password"].pk


def test_hybrid_ranks_the_document_matching_both_first(corpus):
    found = hybrid_search(query="tidal turbines generating electricity", user=None)
    ranked = [r.document_id for r in found.results]
    assert ranked[0] == corpus["turbines"].pk
    assert found.results[0].keyword_rank == 1 and found.results[0].semantic_rank == 1
    # one list alone still contributes: the keyword-only and the meaning-only document both appear
    assert corpus["keyword_only"].pk in ranked and corpus["photovoltaic"].pk in ranked
