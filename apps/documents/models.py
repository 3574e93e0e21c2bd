"""Documents and their embedded chunks.

A ``Document`` is what staff write; the pipeline (signals → ``embed_document``
task → services) turns it into ``Chunk`` rows carrying a 384-d vector (HNSW,
cosine) and a weighted tsvector (title above body) for keyword search.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models.functions import Cast
from pgvector.django import HalfVectorField, HnswIndex, VectorField

from apps.documents.validators import validate_body_size

EMBEDDING_DIMENSIONS = 384
# HNSW build parameters. pgvector's defaults (m=16, ef_construction=64) reach recall@10
# 0.99 on 100k MiniLM vectors at ef_search 128, but on 1M only 0.94 even at ef_search 300;
# m=32 / ef_construction=128 reaches 0.995 at ef_search 400 on 1M, 86x faster than an
# exact scan (docs/benchmarks.md, bench search). The price: builds take ~4x longer
# (about 0.6 ms of CPU per inserted vector, against ~30 ms to embed it).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128
# The HNSW index holds the vectors at half precision (``embedding::halfvec(384)``):
# half the size (and buffer reads) of a full-precision index, with no recall lost on
# MiniLM vectors (docs/benchmarks.md). Columns keep full precision; nearest-neighbour
# queries must ORDER BY this same expression to use the index (see apps/search).
HNSW_INDEX_EXPRESSION = "embedding::halfvec(384)"


class Document(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"

    class Visibility(models.TextChoices):
        PUBLIC = "public", "Public"
        INTERNAL = "internal", "Internal (signed-in users)"
        PRIVATE = "private", "Private (author and staff)"

    class EmbeddingStatus(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    title = models.CharField(max_length=300)
    slug = models.SlugField(max_length=320, unique=True)
    body = models.TextField(blank=True, help_text="Markdown source.", validators=[validate_body_size])
    summary = models.TextField(blank=True)
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, db_index=True)
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC, db_index=True
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="documents"
    )
    source = models.CharField(max_length=100, default="manual", db_index=True)
    external_id = models.CharField(max_length=200, null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    # Pipeline state. content_hash covers (title, body, embedding model id) and is
    # what the stored chunks were built from; empty until the first embedding.
    content_hash = models.CharField(max_length=64, blank=True)
    embedding_status = models.CharField(
        max_length=16, choices=EmbeddingStatus.choices, default=EmbeddingStatus.PENDING, db_index=True
    )
    embedded_at = models.DateTimeField(null=True, blank=True)
    embedding_error = models.TextField(blank=True)

    # Enrichment suggestions from the `enrich` LLM route, accepted by staff in admin.
    suggested_summary = models.TextField(blank=True)
    suggested_tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["source", "external_id"],
                condition=models.Q(external_id__isnull=False),
                name="document_unique_source_external_id",
            ),
        ]
        indexes = [GinIndex(fields=["tags"], name="document_tags_gin")]

    def __str__(self) -> str:
        return self.title


class Chunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    heading_path = models.CharField(max_length=500, blank=True)
    token_count = models.PositiveIntegerField()
    # Tokens of ``text`` as the LLM prompt counts them (apps.llm.tokens, no margin), counted
    # once when the chunk is written so a chat prompt need not tokenise its passages; null
    # for rows written before the column existed and not counted yet (then counted live).
    llm_tokens = models.PositiveIntegerField(null=True, blank=True)
    content_hash = models.CharField(max_length=64, db_index=True)
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS, null=True)
    embedding_model = models.CharField(max_length=200)
    # setweight(title, 'A') || setweight(text, 'B') with the 'english' configuration.
    search_vector = SearchVectorField(null=True)

    class Meta:
        ordering = ["document_id", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_document_ordinal"),
        ]
        indexes = [
            GinIndex(fields=["search_vector"], name="chunk_search_vector_gin"),
            HnswIndex(
                OpClass(Cast("embedding", HalfVectorField(dimensions=EMBEDDING_DIMENSIONS)),
                        name="halfvec_cosine_ops"),
                name="chunk_embedding_halfvec_hnsw",
                m=HNSW_M,
                ef_construction=HNSW_EF_CONSTRUCTION,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"
