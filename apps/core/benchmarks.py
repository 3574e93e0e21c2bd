"""Core benchmark: round-trip latency to the data services the app stands on."""

import time

import redis
from django.conf import settings
from django.db import connection

from apps.core.bench import print_table, register, summary_ms


def _arguments(parser):
    parser.add_argument("--iterations", type=int, default=500)


@register("services", help="PostgreSQL and Redis round-trip latency", arguments=_arguments)
def bench_services(*, stdout, options):
    n = options["iterations"]
    pg, rd = [], []
    client = redis.Redis.from_url(settings.REDIS_URL)
    with connection.cursor() as cursor:
        for _ in range(n):
            t = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            pg.append(time.perf_counter() - t)
    for _ in range(n):
        t = time.perf_counter()
        client.ping()
        rd.append(time.perf_counter() - t)
    figures = {"postgres": summary_ms(pg), "redis": summary_ms(rd)}
    print_table(
        stdout,
        [(k, v["p50_ms"], v["p99_ms"], v["n"]) for k, v in figures.items()],
        ("service", "p50 ms", "p99 ms", "n"),
    )
    return figures
