import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection


@pytest.mark.django_db(transaction=True)
def test_every_migration_reverses_to_zero_and_back():
    ours = [cfg.label for cfg in apps.get_app_configs() if cfg.name.startswith("apps.")]
    assert "core" in ours
    # core holds the pgvector extension; zeroing it unapplies every dependent app first.
    for label in reversed(ours):
        call_command("migrate", label, "zero", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
        assert cursor.fetchone()[0] == 0
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
        assert cursor.fetchone()[0] == 1
