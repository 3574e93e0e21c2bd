from django.db import migrations, models


class Migration(migrations.Migration):
    """Chunks keep their prompt token count (``llm_tokens``), counted when written, so
    a chat prompt fits its passages without tokenising them per question.

    Rows written before stay null (the prompt counts those live) until re-embedded or
    counted by ``manage.py count_chunk_tokens``: not here, because every updated row
    also goes into the HNSW index again (~0.7 ms a chunk; hours of a deploy at 10M).
    Reversible: going back drops the column.
    """

    dependencies = [("documents", "0004_chunk_embedding_halfvec_hnsw")]
    operations = [
        migrations.AddField(
            model_name="chunk",
            name="llm_tokens",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
    ]
