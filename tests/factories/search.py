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


# Each canary is hidden from anonymous readers for a different reason.
CANARIES = {
    "internal": dict(visibility=Document.Visibility.INTERNAL),
    "private": dict(visibility=Document.Visibility.PRIVATE),
    "draft": dict(status=Document.Status.DRAFT),
}


def plant_canaries(*, shared: str, public_title: str, public_tags=(), canary_words: str = "{name}word",
                   canary_tags: bool = False):
    """One public document and one canary per hiding reason, all sharing ``shared``.

    Each canary carries unique words ``zq<canary_words>`` to search for; returns
    ``(author, public, {name: canary})`` where ``author`` wrote every canary.
    """
    from tests.factories.documents import UserFactory

    author = UserFactory()
    public = indexed_document(title=public_title, body=f"{shared} zqpublicword", tags=list(public_tags))
    canaries = {
        name: indexed_document(title=f"Canary {name}", body=f"{shared} zq{canary_words.format(name=name)}",
                               author=author, tags=[f"secret-{name}"] if canary_tags else [], **fields)
        for name, fields in CANARIES.items()
    }
    return author, public, canaries
