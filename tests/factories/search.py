"""Documents that are already embedded (chunks, vectors, postings), ready to be searched."""

from apps.documents.models import Document
from apps.documents.services import embed_document
from tests.factories.documents import DocumentFactory


def indexed_document(**fields):
    """Create a document and run the real embedding pipeline on it in-process.

    In transactional tests the save also enqueues ``embed_document`` on commit, and
    a session worker started by an earlier test may win the race: then our call
    waits on the document's row lock and finds the chunks already there
    ("unchanged"). Either way the document is embedded when this returns.
    """
    document = DocumentFactory(**fields)
    result = embed_document(document.pk)
    assert result.outcome in ("embedded", "unchanged"), result
    document.refresh_from_db()
    assert document.embedding_status == Document.EmbeddingStatus.READY, document.embedding_error
    assert document.chunks.exists() or not document.body.strip()
    return document
