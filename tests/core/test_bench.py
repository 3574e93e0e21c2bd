import json

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_bench_prints_table_then_json_with_machine(capsys):
    call_command("bench", "services", "--iterations", "20")
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["benchmark"] == "services"
    assert result["postgres"]["n"] == 20
    assert result["redis"]["p50_ms"] > 0
    machine = result["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["postgres"].startswith("18")
    assert machine["pgvector"]
    assert any("p50 ms" in line for line in lines[:-1])
