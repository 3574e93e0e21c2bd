from django.db import migrations
from pgvector.django import VectorExtension


class Migration(migrations.Migration):
    """pgvector first: every app that stores vectors depends on this migration."""

    initial = True
    dependencies = []
    operations = [VectorExtension()]
