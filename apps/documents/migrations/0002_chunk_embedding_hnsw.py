from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations
from pgvector.django import HnswIndex


class Migration(migrations.Migration):
    """HNSW (cosine) on chunk embeddings, built without locking writes.

    CREATE INDEX CONCURRENTLY cannot run inside a transaction, hence atomic=False.
    Reversible: AddIndexConcurrently drops the index concurrently on the way down.
    """

    atomic = False
    dependencies = [("documents", "0001_initial")]
    operations = [
        AddIndexConcurrently(
            model_name="chunk",
            index=HnswIndex(
                name="chunk_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
        ),
    ]
