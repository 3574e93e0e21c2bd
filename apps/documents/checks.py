"""Start-up guard: the default embedding backend must produce vectors of the size
the ``Chunk.embedding`` column stores. Run from ``DocumentsConfig.ready()`` so
that web, worker and every management command refuse to start on a mismatch
(a silent mismatch would only show up as failed inserts or garbage search)."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


def check_embedding_dimensions(alias: str = "default") -> None:
    from apps.documents.models import Chunk
    from apps.llm.embeddings import get_embedding_backend

    backend = get_embedding_backend(alias)
    column = Chunk._meta.get_field("embedding").dimensions
    if backend.dimensions != column:
        raise ImproperlyConfigured(
            f"Embedding backend {alias!r} ({backend.model_id}) produces {backend.dimensions}-d vectors but "
            f"documents_chunk.embedding stores {column}-d vectors. Configure a {column}-d model in "
            f"EMBEDDING_BACKENDS or migrate the column (and re-embed every document)."
        )
    if backend.max_tokens <= backend.special_tokens:
        raise ImproperlyConfigured(f"Embedding backend {alias!r}: max_tokens={backend.max_tokens} is too small")
