"""Documents that are already embedded (chunks, vectors, postings), ready to be searched."""

from apps.documents.services import embed_document
from tests.factories.documents import DocumentFactory


def indexed_document(**fields):
    """Create a document and run the real embedding pipeline on it in-process."""
    document = DocumentFactory(**fields)
    result = embed_document(document.pk)
    assert result.outcome == "embedded", result
    document.refresh_from_db()
    return document
