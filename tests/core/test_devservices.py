"""The embedded PostgreSQL runs with the tuning devservices applies (not initdb's defaults)."""

import os

import pytest
from django.db import connection

from apps.core.devservices import PG_TUNING

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="an external server is tuned by its operator"),
]


def test_embedded_postgres_runs_with_the_tuned_settings():
    with connection.cursor() as cursor:
        for name, value in PG_TUNING.items():
            cursor.execute("SELECT current_setting(%s)", [name])
            assert cursor.fetchone()[0] == value, name


def test_shared_buffers_is_a_quarter_of_ram_within_bounds():
    with open("/proc/meminfo") as meminfo:
        total_mb = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1]) // 1024
    size = PG_TUNING["shared_buffers"]
    mb = int(size[:-2]) * (1024 if size.endswith("GB") else 1)
    assert 512 <= mb <= 4096
    assert mb <= max(512, total_mb // 4)
