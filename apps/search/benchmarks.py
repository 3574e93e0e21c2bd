"""``manage.py bench search``: HNSW vs exact scan on >= 100k 384-d chunk vectors.

The collection lives in its own table (``bench_search_vector``), never in
documents_chunk. It holds every real chunk vector already stored (e.g. SciFact
after ``evaluate_search``) plus perturbed copies of them — each copy is a real
vector plus Gaussian-like noise of norm ~1, re-normalised (cosine ~0.7 to its
origin, about the spread of paraphrases) — generated inside PostgreSQL, since
embedding 100k texts with the model would take over an hour on 2 cores.

Queries are real: the BEIR test queries of ``--queries`` embedded with the
configured model (or, without a dataset, held-out perturbed chunk vectors).
The HNSW index is the production kind by default: over ``embedding::halfvec(384)``
like documents_chunk's (``--index vector`` for full precision, ``--compare`` to
measure both). Ground truth is an exact full-precision scan (index scans disabled). Filters select 1 % and
10 % of rows by a ``bucket`` column, with hnsw.iterative_scan off / relaxed /
strict.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction

from apps.core.bench import percentile, print_table, register
from apps.documents.models import HNSW_EF_CONSTRUCTION, HNSW_INDEX_EXPRESSION, HNSW_M

TABLE = "bench_search_vector"
# What an HNSW index over the collection stores, and how a query must order to use it.
INDEX_KINDS = {
    "halfvec": {"expression": f"({HNSW_INDEX_EXPRESSION})", "opclass": "halfvec_cosine_ops",
                "order_by": f"{HNSW_INDEX_EXPRESSION} <=> %s::halfvec(384)"},
    "vector": {"expression": "embedding", "opclass": "vector_cosine_ops", "order_by": "embedding <=> %s::vector"},
}
PRODUCTION_INDEX = "halfvec"  # matches documents_chunk's chunk_embedding_halfvec_hnsw
EF_CANDIDATES = (10, 20, 40, 64, 100, 128, 160, 200, 300, 400, 600, 800, 1000)
RECALL_GOAL = 0.99
NOISE_NORM = 1.0
K = 10


def _arguments(parser):
    parser.add_argument("--chunks", type=int, default=100_000, help="Vectors in the collection (>= 100k for the goal).")
    parser.add_argument("--queries", type=Path, default=settings.BASE_DIR.parent / "shared" / "datasets" / "scifact",
                        help="BEIR folder whose test queries are embedded as query vectors.")
    parser.add_argument("--max-queries", type=int, default=200)
    parser.add_argument("--rebuild", action="store_true", help="Drop and rebuild the collection and its index.")
    parser.add_argument("--index", choices=sorted(INDEX_KINDS), default=PRODUCTION_INDEX,
                        help="What the HNSW index stores: half-precision vectors (production: "
                             "documents_chunk's index is on embedding::halfvec(384)) or full precision.")
    parser.add_argument("--compare", choices=sorted(INDEX_KINDS), default=None,
                        help="Also build an HNSW index of this other kind and report its curve.")
    parser.add_argument("--generator", choices=["data", "isotropic"], default="data",
                        help="How copies are perturbed: along the difference of two other real vectors "
                             "(stays in the space real embeddings occupy), or by isotropic uniform noise.")
    parser.add_argument("--drop", action="store_true", help="Drop the benchmark table afterwards.")
    parser.add_argument("--m", type=int, default=HNSW_M, help="HNSW m (graph degree); needs --rebuild to change.")
    parser.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION,
                        help="HNSW ef_construction; needs --rebuild to change.")


def _scalar(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def _build(chunks: int, generator: str, stdout) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, origin bigint, bucket int NOT NULL, "
                       f"embedding vector(384) NOT NULL)")
        cursor.execute(f"INSERT INTO {TABLE} (origin, bucket, embedding) "
                       f"SELECT id, 0, embedding FROM documents_chunk WHERE embedding IS NOT NULL ORDER BY id")
        real = _scalar(f"SELECT count(*) FROM {TABLE}")
        if real < 1000:
            raise RuntimeError("need >= 1000 real chunk vectors: run `manage.py evaluate_search` on SciFact first")
        stdout.write(f"real chunk vectors: {real}; generating {max(0, chunks - real)} perturbed copies ({generator})")
        started = time.perf_counter()
        copies = max(0, chunks - real)
        if generator == "isotropic":
            # Uniform(-s/2, s/2) per dimension has norm sqrt(384 * s^2 / 12); pick s for NOISE_NORM.
            scale = NOISE_NORM / (384 / 12) ** 0.5
            noise = "(SELECT array_agg((random() - 0.5) * %s)::vector FROM generate_series(1, 384) WHERE pick.i > 0)"
            noise_params = [scale]
            joins = ""
        else:
            # origin + 0.6 * (x - y) for two other real vectors x, y: a step along a direction
            # real embeddings actually vary in (cosine to the origin ~0.75).
            noise = "((x.embedding - y.embedding) * array_fill(0.6::real, ARRAY[384])::vector)"
            noise_params = []
            joins = " JOIN src x ON x.rn = pick.x_rn JOIN src y ON y.rn = pick.y_rn"
        cursor.execute(
            f"""WITH src AS MATERIALIZED (SELECT row_number() OVER (ORDER BY id) AS rn, id, embedding FROM {TABLE}),
                     pick AS MATERIALIZED (
                         SELECT g.i, 1 + (g.i %% %s) AS o_rn,
                                1 + floor(random() * %s)::int AS x_rn, 1 + floor(random() * %s)::int AS y_rn
                         FROM generate_series(1, %s) AS g(i))
                INSERT INTO {TABLE} (origin, bucket, embedding)
                SELECT o.id, 0, l2_normalize(o.embedding + {noise})
                FROM pick JOIN src o ON o.rn = pick.o_rn{joins}""",
            [real, real, real, copies, *noise_params],
        )
        # bucket = a random 0..99: "bucket = 0" is 1 % of rows, "bucket < 10" is 10 %.
        cursor.execute(f"UPDATE {TABLE} SET bucket = floor(random() * 100)::int")
        generated = time.perf_counter() - started
        cursor.execute(f"ANALYZE {TABLE}")
    return {"real_vectors": real, "generator": generator, "generate_s": round(generated, 1)}


def _index_name(kind: str) -> str:
    return f"{TABLE}_hnsw_{kind}"


def _ensure_index(kind: str, *, m: int, ef_construction: int, rebuild: bool, stdout) -> float | None:
    """Build the ``kind`` HNSW index unless it exists with these parameters; seconds taken, or None."""
    wanted = f"m={int(m)},ef_construction={int(ef_construction)}"
    current = _scalar("SELECT (SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = %s)",
                      [_index_name(kind)])
    if current == wanted and not rebuild:
        return None
    spec = INDEX_KINDS[kind]
    stdout.write(f"building the {kind} HNSW index ({wanted}) ...")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {_index_name(kind)}")
        # Enough for a 1M-vector halfvec graph to be built in memory (24 GB machine).
        cursor.execute("SET maintenance_work_mem = '3GB'")
        started = time.perf_counter()
        cursor.execute(f"CREATE INDEX {_index_name(kind)} ON {TABLE} USING hnsw "
                       f"({spec['expression']} {spec['opclass']}) "
                       f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})")
        built = time.perf_counter() - started
        cursor.execute("RESET maintenance_work_mem")
    return round(built, 1)


def _drop_index(kind: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {_index_name(kind)}")


def _query_vectors(options, stdout) -> list[str]:
    folder: Path = options["queries"]
    limit = options["max_queries"]
    if (folder / "queries.jsonl").exists():
        from apps.llm.embeddings import get_embedding_backend
        from apps.search.evaluation import read_qrels, read_queries

        texts = [text for _, text in read_queries(folder, read_qrels(folder))][:limit]
        stdout.write(f"embedding {len(texts)} queries from {folder}")
        vectors = get_embedding_backend().embed_documents(texts)
        return ["[" + ",".join(f"{x:.7g}" for x in v) + "]" for v in vectors]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT embedding::text FROM {TABLE} WHERE origin IS NOT NULL ORDER BY random() LIMIT %s",
                       [limit])
        return [row[0] for row in cursor.fetchall()]


def _run(query: str, vector: str, *, settings_sql: list[tuple[str, str]]) -> tuple[list[int], float]:
    with transaction.atomic(), connection.cursor() as cursor:
        for name, value in settings_sql:
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
        started = time.perf_counter()
        cursor.execute(query, [vector, K])
        ids = [row[0] for row in cursor.fetchall()]
        return ids, time.perf_counter() - started


def _plan_uses_hnsw(query: str, vector: str, settings_sql) -> bool:
    with transaction.atomic(), connection.cursor() as cursor:
        for name, value in settings_sql:
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
        cursor.execute("EXPLAIN " + query, [vector, K])
        return any(f"{TABLE}_hnsw" in row[0] for row in cursor.fetchall())


def _measure(query: str, vectors: list[str], truth: list[list[int]] | None, settings_sql) -> dict:
    recalls, rows, times, results = [], [], [], []
    for i, vector in enumerate(vectors):
        ids, seconds = _run(query, vector, settings_sql=settings_sql)
        results.append(ids)
        times.append(seconds * 1000)
        rows.append(len(ids))
        if truth is not None:
            expected = set(truth[i])
            recalls.append(len(expected & set(ids)) / len(expected) if expected else 1.0)
    return {
        "recall_at_10": round(sum(recalls) / len(recalls), 4) if recalls else None,
        "rows_mean": round(sum(rows) / len(rows), 2),
        "p50_ms": round(percentile(times, 50), 3),
        "p99_ms": round(percentile(times, 99), 3),
        "uses_hnsw": _plan_uses_hnsw(query, vectors[0], settings_sql),
        "_ids": results,
    }


# Exact scan without the vector index: on one core like an HNSW scan (the speedup
# figure), and as PostgreSQL runs it by default with parallel workers (reported too).
EXACT = [("enable_indexscan", "off"), ("max_parallel_workers_per_gather", "0")]
EXACT_PARALLEL = [("enable_indexscan", "off")]
# No other index exists on the table, so disabling seq scans leaves only the HNSW path.
FORCE_HNSW = [("enable_seqscan", "off")]


def _curve(kind: str, vectors, truth, exact: dict, exact_parallel: dict) -> dict:
    """recall@10 and latency at every ef_search through the ``kind`` index, against exact truth."""
    query = f"SELECT id FROM {TABLE} ORDER BY {INDEX_KINDS[kind]['order_by']} LIMIT %s"
    curve = {}
    for ef in EF_CANDIDATES:
        m = _measure(query, vectors, truth, [("hnsw.ef_search", str(ef)), ("hnsw.iterative_scan", "off")])
        m.pop("_ids")
        m["speedup_p50"] = round(exact["p50_ms"] / m["p50_ms"], 1) if m["p50_ms"] else None
        m["speedup_p50_vs_parallel"] = round(exact_parallel["p50_ms"] / m["p50_ms"], 1) if m["p50_ms"] else None
        curve[ef] = m
    return curve


def _curve_rows(curve: dict) -> list[tuple]:
    return [(ef, m["recall_at_10"], m["p50_ms"], m["p99_ms"], m["speedup_p50"], m["speedup_p50_vs_parallel"])
            for ef, m in curve.items()]


def _index_mb(kind: str) -> float:
    return round(_scalar("SELECT pg_relation_size(%s::regclass)", [_index_name(kind)]) / 2**20, 1)


CURVE_COLUMNS = ("ef_search", "recall@10", "p50 ms", "p99 ms", "speedup p50", "vs parallel exact")


@register("search", help="HNSW vs exact scan: recall@10, latency, filtered queries with/without iterative scan",
          arguments=_arguments)
def bench_search(*, stdout, options):
    chunks = max(1000, options["chunks"])
    kind, compare = options["index"], options["compare"]
    existing = _scalar("SELECT to_regclass(%s) IS NOT NULL", [TABLE])
    build, rebuild = {}, options["rebuild"]
    if rebuild or not existing or _scalar(f"SELECT count(*) FROM {TABLE}") != chunks:
        stdout.write(f"building {TABLE} with {chunks} vectors ...")
        build = _build(chunks, options["generator"], stdout)
        rebuild = True
    for each in dict.fromkeys(filter(None, (kind, compare))):
        seconds = _ensure_index(each, m=options["m"], ef_construction=options["ef_construction"],
                                rebuild=rebuild, stdout=stdout)
        if seconds is not None:
            build[f"{each}_index_build_s"] = seconds
    total = _scalar(f"SELECT count(*) FROM {TABLE}")
    vectors = _query_vectors(options, stdout)

    plain = f"SELECT id FROM {TABLE} ORDER BY {INDEX_KINDS[kind]['order_by']} LIMIT %s"
    exact_sql = f"SELECT id FROM {TABLE} ORDER BY embedding <=> %s::vector LIMIT %s"  # the truth: full precision
    # Warm-up pass (index and table pages into cache), not measured.
    _measure(plain, vectors, None, [("hnsw.ef_search", str(EF_CANDIDATES[-1]))])
    exact_parallel = _measure(exact_sql, vectors, None, EXACT_PARALLEL)
    exact_parallel.pop("_ids")
    exact = _measure(exact_sql, vectors, None, EXACT)
    truth = exact.pop("_ids")

    curve = _curve(kind, vectors, truth, exact, exact_parallel)
    chosen = next((ef for ef in EF_CANDIDATES if curve[ef]["recall_at_10"] >= RECALL_GOAL), EF_CANDIDATES[-1])
    rows = _curve_rows(curve)
    rows.append(("exact, 1 core", 1.0, exact["p50_ms"], exact["p99_ms"], 1.0, ""))
    rows.append(("exact, parallel", 1.0, exact_parallel["p50_ms"], exact_parallel["p99_ms"], "", 1.0))
    stdout.write(f"HNSW index: {kind} ({_index_mb(kind)} MB)")
    print_table(stdout, rows, CURVE_COLUMNS)

    sizes = {f"{kind}_index_mb": _index_mb(kind),
             "shared_buffers": _scalar("SELECT current_setting('shared_buffers')")}
    comparison = None
    if compare and compare != kind:
        _measure(f"SELECT id FROM {TABLE} ORDER BY {INDEX_KINDS[compare]['order_by']} LIMIT %s", vectors, None,
                 [("hnsw.ef_search", str(EF_CANDIDATES[-1]))])  # warm-up
        comparison = _curve(compare, vectors, truth, exact, exact_parallel)
        sizes[f"{compare}_index_mb"] = _index_mb(compare)
        stdout.write(f"for comparison, HNSW index: {compare} ({sizes[f'{compare}_index_mb']} MB)")
        print_table(stdout, _curve_rows(comparison), CURVE_COLUMNS)
        _drop_index(compare)  # it would only slow the next writes to the table

    filtered = {}
    ef = str(chosen)
    for label, predicate in (("1pct", "bucket = 0"), ("10pct", "bucket < 10")):
        query = f"SELECT id FROM {TABLE} WHERE {predicate} ORDER BY {INDEX_KINDS[kind]['order_by']} LIMIT %s"
        f_exact = _measure(exact_sql.replace("ORDER BY", f"WHERE {predicate} ORDER BY"), vectors, None, EXACT)
        f_truth = f_exact.pop("_ids")
        entry = {"selectivity": _scalar(f"SELECT round(avg(({predicate})::int)::numeric, 4) FROM {TABLE}"),
                 "exact_p50_ms": f_exact["p50_ms"]}
        # Forced through the HNSW index, to show what iterative scan changes ...
        for scan in ("off", "relaxed_order", "strict_order"):
            m = _measure(query, vectors, f_truth, [("hnsw.ef_search", ef), ("hnsw.iterative_scan", scan), *FORCE_HNSW])
            m.pop("_ids")
            entry[f"iterative_{scan}"] = m
        # ... and what the planner picks by itself with the service's settings.
        m = _measure(query, vectors, f_truth, [("hnsw.ef_search", ef), ("hnsw.iterative_scan", "relaxed_order")])
        m.pop("_ids")
        entry["planner_relaxed_order"] = m
        filtered[label] = entry
    print_table(
        stdout,
        [(label, e["selectivity"], variant, e[variant]["rows_mean"], e[variant]["recall_at_10"],
          e[variant]["p50_ms"], e[variant]["uses_hnsw"], e["exact_p50_ms"])
         for label, e in filtered.items()
         for variant in ("iterative_off", "iterative_relaxed_order", "iterative_strict_order",
                         "planner_relaxed_order")],
        ("filter", "share", "variant", "rows (k=10)", "recall@10", "p50 ms", "hnsw", "exact p50 ms"),
    )
    best = curve[chosen]
    index_options = _scalar("SELECT (SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = %s)",
                            [_index_name(kind)])
    if options["drop"]:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")

    def without_plan(c: dict) -> dict:
        return {str(k): {kk: v for kk, v in m.items() if kk != "uses_hnsw"} for k, m in c.items()}

    return {
        "chunks": total,
        "queries": len(vectors),
        "index": kind,
        "ef_search": chosen,
        "index_options": index_options,
        "recall_at_10": best["recall_at_10"],
        "hnsw_p50_ms": best["p50_ms"],
        "hnsw_p99_ms": best["p99_ms"],
        "exact_p50_ms": exact["p50_ms"],
        "exact_p99_ms": exact["p99_ms"],
        "exact_parallel_p50_ms": exact_parallel["p50_ms"],
        "speedup_p50_vs_parallel": best["speedup_p50_vs_parallel"],
        "speedup_p50": best["speedup_p50"],
        "ef_curve": without_plan(curve),
        "filtered": filtered,
        **sizes,
        **({f"{compare}_curve": without_plan(comparison)} if comparison else {}),
        **build,
    }
