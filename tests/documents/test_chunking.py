"""Chunking: sized in the model's own tokens, heading/paragraph aware, deterministic."""

import pytest

from apps.documents.chunking import chunk_document, document_content_hash, split_sections
from apps.llm.embeddings import get_embedding_backend

PARAGRAPH = ("Quire splits every document into passages that fit the embedding model, keeping headings "
             "so that each passage knows where it came from in the document. ")


@pytest.fixture(scope="module")
def minilm():
    """The real MiniLM tokenizer (tokenizers only: no torch is loaded for counting)."""
    return get_embedding_backend("minilm")


def long_body() -> str:
    sections = []
    for i in range(6):
        paragraphs = "\n\n".join(PARAGRAPH * (1 + (i + j) % 4) for j in range(4))
        sections.append(f"## Section {i}\n\n{paragraphs}")
    return "# Guide\n\nIntro paragraph.\n\n" + "\n\n".join(sections) + "\n\n" + ("averyveryverylongtoken" * 400)


def test_no_chunk_exceeds_the_model_limit_with_its_title_prefix(minilm):
    title = "A deliberately long title " * 30
    chunks = chunk_document(title=title, body=long_body(), backend=minilm)
    assert len(chunks) > 10
    tokenizer = minilm._get_tokenizer()
    for chunk in chunks:
        real = len(tokenizer.encode(chunk.embed_input, add_special_tokens=True).ids)
        assert real == chunk.token_count
        assert real <= minilm.max_tokens == 256
    # sized near the 200-token target, not in tiny fragments
    assert max(c.token_count for c in chunks) > 150


def test_chunks_follow_headings_and_carry_title_and_heading_path(minilm):
    body = "# Guide\n\nIntro.\n\n## Install\n\nRun make run.\n\n### Linux\n\nUse apt.\n\n## Search\n\nType words."
    chunks = chunk_document(title="Handbook", body=body, backend=minilm)
    assert [c.heading_path for c in chunks] == ["Guide", "Guide › Install", "Guide › Install › Linux",
                                                "Guide › Search"]
    assert [c.text for c in chunks] == ["Intro.", "Run make run.", "Use apt.", "Type words."]
    assert chunks[2].embed_input == "Handbook › Guide › Install › Linux\n\nUse apt."
    assert [c.ordinal for c in chunks] == [0, 1, 2, 3]


def test_paragraphs_are_kept_whole_and_consecutive_chunks_overlap(minilm):
    paragraphs = [f"Paragraph {i}. " + PARAGRAPH * 2 for i in range(8)]
    chunks = chunk_document(title="T", body="\n\n".join(paragraphs), backend=minilm,
                            target_tokens=200, overlap_tokens=30)
    assert len(chunks) >= 3
    for chunk in chunks:
        for piece in chunk.text.split("\n\n"):
            # every piece is a whole paragraph or a whole sentence of one (overlap carries sentences)
            assert any(piece in p for p in paragraphs)
    for previous, current in zip(chunks, chunks[1:], strict=False):
        first_piece = current.text.split("\n\n")[0]
        assert first_piece in previous.text, "the next chunk starts with the end of the previous one"


def test_chunking_is_deterministic_and_hashes_depend_on_content_and_model(minilm):
    body = long_body()
    first = chunk_document(title="Same", body=body, backend=minilm)
    second = chunk_document(title="Same", body=body, backend=minilm)
    assert first == second
    other_title = chunk_document(title="Other", body=body, backend=minilm)
    assert {c.content_hash for c in first}.isdisjoint({c.content_hash for c in other_title})
    test_backend = get_embedding_backend()
    assert document_content_hash(title="a", body="b", model_id=minilm.model_id) != document_content_hash(
        title="a", body="b", model_id=test_backend.model_id)


def test_empty_body_gives_no_chunks(minilm):
    assert chunk_document(title="Empty", body="", backend=minilm) == []
    assert chunk_document(title="Blank", body="  \n\n \n", backend=minilm) == []


def test_fenced_code_is_not_split_into_headings():
    sections = split_sections("## Real\n\n```bash\n# not a heading\nmake run\n\nmake test\n```\n\nAfter.")
    assert sections == [(["Real"], ["```bash\n# not a heading\nmake run\n\nmake test\n```", "After."])]


def test_the_safety_net_trims_a_chunk_if_counts_are_not_additive():
    from apps.documents.chunking import _trim_to_limit

    backend = get_embedding_backend()  # deterministic: words and punctuation are tokens
    text, count = _trim_to_limit("Title\n\n", "one two three four five six", 4, backend)
    assert (text, count) == ("one two three", 4)
    text, count = _trim_to_limit("Title\n\n", "x" * 50, 1, backend)
    assert count <= 1
