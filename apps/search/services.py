"""Hybrid retrieval: BM25 keyword ranking + HNSW semantic ranking, fused with
reciprocal rank fusion, all in SQL with the visibility rule inside the query.

Public face (used by the pages, the API, evaluation and chat):

* :func:`hybrid_search` — documents (best chunk per document) with snippet, facets, total;
* :func:`retrieve_passages` — the best chunks for RAG (at most a few per document);
  :func:`aretrieve_passages` does the same for async code, on the event loop, and
  :func:`aembed_query_soon` starts its query embedding early (chat does, while it checks the caller);
* :func:`similar_documents` — "more like this" from a document's vectors.

How the keyword side works: ``search_posting`` (kept current by triggers on
``documents_chunk``, see migration 0001) holds (lexeme, chunk, tf, chunk length)
under a covering primary key. A query first counts each of its lexemes' postings
(document frequency, index-only) and reads N / average length from the slotted
corpus stats, then reads the postings again and computes Lucene-style BM25 in one
GROUP BY, joined to ``search_document`` (migration 0002) for visibility and filters.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import time
from array import array
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from prometheus_client import Counter, Histogram

from apps.core.adb import afetch_prepared
from apps.core.db import BinaryVector, fetch_prepared
from apps.core.degraded import warn_once_a_minute
from apps.core.logging import get_logger
from apps.documents.models import EMBEDDING_DIMENSIONS, HNSW_INDEX_EXPRESSION
from apps.documents.selectors import visibility_sql
from apps.search.query import ParsedQuery, clean_text, parse_query

logger = get_logger("quire.search")

MODES = ("hybrid", "semantic", "keyword")
# Passages per document in retrieve_passages: enough context, not one document's monologue.
PASSAGES_PER_DOCUMENT = 2
PASSAGE_CANDIDATES = 50
# Passages' keyword list: how many best matches are checked for visibility per chunk wanted.
KEYWORD_OVERFETCH = 4
MAX_FACETS = 30
# Nearest chunks fetched per wanted document on the semantic side.
CHUNKS_PER_DOCUMENT = 3
# Private-use sentinels for ts_headline: the snippet is HTML-escaped afterwards and
# only these become <mark> tags, so a document can never inject markup.
_MARK_START, _MARK_STOP = "\ue000", "\ue001"
_HEADLINE_OPTIONS = (
    f"StartSel={_MARK_START}, StopSel={_MARK_STOP}, MaxWords=40, MinWords=18, "
    'MaxFragments=2, FragmentDelimiter=" … "'
)

SEARCH_QUERIES = Counter("quire_search_queries_total", "Search queries served", ["mode"])
SEARCH_ZERO_RESULTS = Counter("quire_search_zero_results_total", "Search queries with no result", ["mode"])
SEARCH_DEGRADED = Counter("quire_search_degraded_total", "Searches (and chat retrievals) ranked by keyword only: "
                          "the embedding backend failed", ["surface"])
SEARCH_LATENCY = Histogram(
    "quire_search_latency_seconds",
    "Search service latency (SQL and query embedding)",
    ["mode"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
PASSAGES_LATENCY = Histogram(
    "quire_search_passages_seconds",
    "Passage retrieval (chat's RAG), by stage: the wait for the query vector, then the statement (built and run)",
    ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5),
)


@dataclass
class SearchFilters:
    tags: list[str] = field(default_factory=list)  # documents carrying ALL of these tags
    date_from: date | None = None  # published on or after
    date_to: date | None = None  # published on or before
    sources: list[str] = field(default_factory=list)  # e.g. ["beir:scifact"] for evaluation

    @property
    def is_empty(self) -> bool:
        return not (self.tags or self.date_from or self.date_to or self.sources)


@dataclass
class SearchResult:
    document_id: int
    slug: str
    title: str
    url: str
    snippet: str  # HTML: escaped text with <mark> around query terms
    score: float
    tags: list[str]
    published_at: datetime | None
    chunk_id: int
    heading_path: str = ""
    keyword_rank: int | None = None
    semantic_rank: int | None = None


@dataclass
class SearchResults:
    query: str
    mode: str
    results: list[SearchResult]
    total: int
    facets: list[tuple[str, int]]  # (tag, documents in the whole result set), most common first
    took_ms: float
    limit: int
    offset: int
    degraded: bool = False  # semantic side unavailable; keyword results only

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Passage:
    document_id: int
    chunk_id: int
    title: str
    slug: str
    url: str
    heading_path: str
    text: str
    score: float
    text_tokens: int | None = None  # Chunk.llm_tokens: the text's prompt tokens (no margin), if counted


# --- SQL building blocks ---------------------------------------------------------------
def _start_of_day(day: date) -> datetime:
    """Midnight of ``day`` in the site's time zone (TIME_ZONE), as an aware datetime."""
    return timezone.make_aware(datetime.combine(day, datetime.min.time()))


def _filter_sql(filters: SearchFilters | None, *, alias: str = "d") -> tuple[str, list]:
    if filters is None or filters.is_empty:
        return "TRUE", []
    parts, params = [], []
    if filters.tags:
        parts.append(f"{alias}.tags @> %s::varchar[]")
        params.append([clean_text(tag)[:64] for tag in filters.tags])
    if filters.date_from:
        parts.append(f"{alias}.published_at >= %s")
        params.append(_start_of_day(filters.date_from))
    if filters.date_to and filters.date_to < date.max:  # no day after 9999-12-31 (OverflowError): no bound
        parts.append(f"{alias}.published_at < %s")
        params.append(_start_of_day(filters.date_to + timedelta(days=1)))
    if filters.sources:
        parts.append(f"{alias}.source = ANY(%s)")
        params.append(list(filters.sources))
    return " AND ".join(parts) or "TRUE", params


def _text_filter_sql(parsed: ParsedQuery, *, alias: str = "c") -> tuple[str, list]:
    """Quoted phrases must match, exclusions must not (websearch meaning)."""
    parts, params = [], []
    for phrase in parsed.phrases:
        parts.append(f"(numnode(phraseto_tsquery('english', %s)) = 0 OR {alias}.search_vector @@ phraseto_tsquery('english', %s))")
        params += [phrase, phrase]
    for excluded in parsed.excluded:
        parts.append(f"NOT coalesce({alias}.search_vector @@ phraseto_tsquery('english', %s), false)")
        params.append(excluded)
    return (" AND ".join(parts) or "TRUE"), params


@dataclass
class _Scope:
    """Everything that restricts which chunks may be returned, as SQL over d (document) and c (chunk)."""

    where: str
    params: list
    needs_chunk_join: bool
    filtered: bool  # anything beyond "all rows": decides hnsw.iterative_scan


def _scope(user, filters: SearchFilters | None, parsed: ParsedQuery) -> _Scope:
    # ``d`` is search_document (migration 0002): a trigger-kept narrow mirror of the
    # documents_document columns the visibility rule and the filters read.
    vis, vis_params = visibility_sql(user, alias="d")
    flt, flt_params = _filter_sql(filters)
    txt, txt_params = _text_filter_sql(parsed)
    return _Scope(
        where=f"{vis} AND {flt} AND {txt}",
        params=[*vis_params, *flt_params, *txt_params],
        needs_chunk_join=txt != "TRUE",
        filtered=(vis != "TRUE" or flt != "TRUE" or txt != "TRUE"),
    )


def _keyword_chunks_cte(parsed: ParsedQuery, scope: _Scope, *, top: int | None = None) -> tuple[str, list]:
    """CTEs ending in ``kw_chunks(chunk_id, document_id, score, tags)``: BM25 per visible chunk.

    The query's distinct lexemes (Postgres's ``english`` analyzer) and their idf-weights are
    computed by this same statement (``kw_df``, ``kw_terms``: no round trip of their own). Document
    frequency is ``count(*)`` over the lexeme's postings, an index-only scan of the covering
    primary key, so it is exact at every moment and no writer ever updates a shared
    per-lexeme counter; N and the average chunk length come from the slotted corpus
    statistics. ``kw_terms`` holds only the terms some chunk has: empty, nothing matched.

    ``top``: only the best ``top`` visible chunks (score, then chunk id), found without joining
    every matched chunk to its document: the best ``KEYWORD_OVERFETCH * top`` matched chunks are
    checked for visibility, and that is exact when ``top`` of them are visible or when they are
    all the matches; otherwise (a corpus whose best matches the reader mostly may not see) the
    statement ranks every visible match instead, in the same round trip.
    """
    k1, b = float(settings.SEARCH_BM25_K1), float(settings.SEARCH_BM25_B)
    chunk_join = "JOIN documents_chunk c ON c.id = s.chunk_id" if scope.needs_chunk_join else ""
    # BM25 per posting, tf * (k1 + 1) * idf / (tf + k1 * (1 - b + b * dl / avgdl)), as
    # w * tf / (tf + c + l * dl): the factors constant for the statement (w = (k1 + 1) * idf per
    # term, c = k1 * (1 - b), l = k1 * b / avgdl) are computed once in kw_terms, in float8 (a
    # bare decimal literal times an integer column is numeric arithmetic, several times slower).
    # A term's df is counted once (kw_df): an expression naming it twice would count it twice.
    sql = f"""
    kw_corpus AS MATERIALIZED (
        SELECT greatest(coalesce(sum(chunks), 0), 1)::float8 AS n,
               greatest(coalesce(sum(total_length), 0), 1)::float8 / greatest(coalesce(sum(chunks), 0), 1) AS avgdl
        FROM search_corpus_stats
    ),
    kw_df AS MATERIALIZED (
        SELECT x.lexeme,
               (SELECT count(*) FROM search_posting p WHERE p.lexeme = (x.lexeme COLLATE "C"))::float8 AS df
        FROM (SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', %s))
              LIMIT {int(settings.SEARCH_MAX_QUERY_TERMS)}) x
    ),
    kw_terms AS MATERIALIZED (
        SELECT t.lexeme, {k1 + 1!r}::float8 * ln(1 + (k.n - t.df + 0.5) / (t.df + 0.5)) AS w,
               {k1 * (1 - b)!r}::float8 AS c, {k1 * b!r}::float8 / k.avgdl AS l
        FROM kw_df t, kw_corpus k
        WHERE t.df > 0
    ),
    kw_scored AS {"NOT MATERIALIZED " if top else ""}(
        SELECT p.chunk_id, p.document_id, sum(q.w * p.tf / (p.tf + q.c + q.l * p.dl)) AS score
        FROM kw_terms q
        JOIN search_posting p ON p.lexeme = (q.lexeme COLLATE "C")
        GROUP BY p.chunk_id, p.document_id
    ),"""

    def visible(source: str) -> str:
        return f"""SELECT s.chunk_id, s.document_id, s.score, d.tags FROM {source} s
        JOIN search_document d ON d.id = s.document_id {chunk_join}
        WHERE {scope.where}"""

    if top is None:
        return sql + f"\n    kw_chunks AS ({visible('kw_scored')})", [parsed.text, *scope.params]
    top, over = int(top), int(top) * KEYWORD_OVERFETCH
    # kw_scored is inlined (NOT MATERIALIZED) in both branches; the second runs only when needed.
    sql += f"""
    kw_best AS MATERIALIZED (SELECT chunk_id, document_id, score FROM kw_scored ORDER BY score DESC, chunk_id
                             LIMIT {over}),
    kw_fast AS MATERIALIZED ({visible('kw_best')} ORDER BY s.score DESC, s.chunk_id LIMIT {top}),
    kw_exact AS MATERIALIZED (
        SELECT (SELECT count(*) FROM kw_fast) = {top} OR (SELECT count(*) FROM kw_best) < {over} AS exact
    ),
    kw_chunks AS (
        SELECT * FROM kw_fast WHERE (SELECT exact FROM kw_exact)
        UNION ALL
        SELECT * FROM ({visible('kw_scored')} ORDER BY s.score DESC, s.chunk_id LIMIT {top}) every_visible
        WHERE NOT (SELECT exact FROM kw_exact)
    )"""
    return sql, [parsed.text, *scope.params, *scope.params]


def _semantic_chunks_cte(scope: _Scope, depth: int, *, exclude_document: int | None = None) -> tuple[str, list]:
    """CTE ``sem_chunks(chunk_id, document_id, distance)``: nearest visible chunks via HNSW.

    Callers bind: vector, *returned params, vector. ORDER BY the index's own
    expression (``HNSW_INDEX_EXPRESSION``, half precision) + LIMIT is what lets PostgreSQL
    walk the HNSW index; with a filter, hnsw.iterative_scan keeps walking until ``depth``
    rows passed it. ``distance`` is then computed at full precision for the candidates
    found, so ranks and scores are exact (a re-rank of the ``depth`` candidates).
    """
    extra = "AND c.document_id <> %s" if exclude_document is not None else ""
    sql = f"""
    sem_chunks AS MATERIALIZED (
        SELECT c.id AS chunk_id, c.document_id, c.embedding <=> %s::vector AS distance, d.tags
        FROM documents_chunk c JOIN search_document d ON d.id = c.document_id
        WHERE c.embedding IS NOT NULL AND {scope.where} {extra}
        ORDER BY c.{HNSW_INDEX_EXPRESSION} <=> %s::vector::halfvec({EMBEDDING_DIMENSIONS})
        LIMIT {int(depth)}
    )"""
    params = [*scope.params, *([exclude_document] if exclude_document is not None else [])]
    return sql, params


def _hnsw_settings(*, depth: int, filtered: bool, ef_search: int | None = None) -> tuple[str, list]:
    """The statement setting ``hnsw.*`` for the rest of the transaction (SET LOCAL)."""
    ef_search = min(1000, max(settings.SEARCH_HNSW_EF_SEARCH if ef_search is None else ef_search, depth))
    return ("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', %s, true)",
            [str(ef_search), "relaxed_order" if filtered else "off"])


def _configure_hnsw(cursor, *, depth: int, filtered: bool) -> None:
    cursor.execute(*_hnsw_settings(depth=depth, filtered=filtered))


def _embed_query(text: str) -> list[float] | None:
    from apps.llm.embeddings import EmbeddingError, get_embedding_backend

    try:
        return get_embedding_backend().embed_query(text)
    except EmbeddingError as exc:
        _semantic_side_lost("search", exc)
        return None


def _semantic_side_lost(surface: str, exc: Exception) -> None:
    """The embedding backend failed: keyword ranking only (``degraded``), counted, and said
    once a minute per process, not once per query (apps.core.degraded)."""
    SEARCH_DEGRADED.labels(surface).inc()
    warn_once_a_minute("search.embedding_unavailable", exc, surface=surface)


def _vector_literal(vector) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")


# --- hybrid_search ---------------------------------------------------------------------
def _fused_ranking(ctes: list[str]) -> str:
    """Reciprocal rank fusion of the two chunk lists, then the best chunk per document.

    Chunks are fused (a chunk both lists rank high wins), then grouped: a document's
    score is its best chunk's. Only the first SEARCH_RRF_DEPTH ranks of each list
    contribute; documents matched deeper (long keyword tails) stay in the result set,
    after every fused one, ordered by their best rank — so totals and facets still
    cover every match. kw_rank / sem_rank are the document's best chunk ranks.
    """
    weights, k = settings.SEARCH_RRF_WEIGHTS, int(settings.SEARCH_RRF_K)
    window = int(settings.SEARCH_RRF_DEPTH)
    ctes.append(f"""
    kw_chunk_ranked AS (
        SELECT chunk_id, document_id, tags, row_number() OVER (ORDER BY score DESC, chunk_id) AS rnk FROM kw_chunks
    ),
    sem_chunk_ranked AS (
        SELECT chunk_id, document_id, tags, row_number() OVER (ORDER BY distance, chunk_id) AS rnk
        FROM sem_chunks WHERE distance < 1
    ),
    fused_chunks AS (
        SELECT coalesce(kc.chunk_id, sc.chunk_id) AS chunk_id, coalesce(kc.document_id, sc.document_id) AS document_id,
               coalesce(kc.tags, sc.tags) AS tags, kc.rnk AS kr, sc.rnk AS sr,
               CASE WHEN kc.rnk <= {window} THEN {float(weights['keyword'])} / ({k} + kc.rnk) ELSE 0 END
                 + CASE WHEN sc.rnk <= {window} THEN {float(weights['semantic'])} / ({k} + sc.rnk) ELSE 0 END AS fused
        FROM kw_chunk_ranked kc FULL OUTER JOIN sem_chunk_ranked sc ON sc.chunk_id = kc.chunk_id
    )""")
    return """
        SELECT document_id, chunk_id,
               CASE WHEN fused > 0 THEN fused ELSE 1.0 / (1000000 + best_rank) END AS score,
               kw_rank, sem_rank, tags
        FROM (SELECT DISTINCT ON (document_id) document_id, chunk_id, tags, fused, least(kr, sr) AS best_rank,
                     min(kr) OVER (PARTITION BY document_id) AS kw_rank,
                     min(sr) OVER (PARTITION BY document_id) AS sem_rank
              FROM fused_chunks ORDER BY document_id, fused DESC, least(kr, sr), chunk_id) best"""


def _ranked_documents(cursor, *, parsed, scope, mode, vector, depth, limit, offset):
    """Rank every candidate document in SQL; return (total, facets, page).

    ``page`` rows are (document_id, chunk_id, score, kw_rank, sem_rank), best first;
    total and tag facets are computed over the whole ranked set in the same
    statement, so only one page of rows ever leaves the database. Hybrid ranking falls
    back to the semantic ranking (cosine scores) when no query term is in the corpus.
    """
    ctes, params = [], []
    use_keyword = mode in ("keyword", "hybrid") and not parsed.is_empty
    use_semantic = mode in ("semantic", "hybrid") and vector is not None
    if not (use_keyword or use_semantic):
        return 0, [], []
    if use_keyword:
        sql, p = _keyword_chunks_cte(parsed, scope)
        ctes.append(sql)
        params += p
    if use_semantic:
        sql, p = _semantic_chunks_cte(scope, depth)
        ctes.append(sql)
        literal = _vector_literal(vector)
        params += [literal, *p, literal]
        ctes.append("""
    sem_ranked AS (
        SELECT document_id, chunk_id, distance, tags, row_number() OVER (ORDER BY distance, document_id) AS rnk
        FROM (SELECT DISTINCT ON (document_id) document_id, chunk_id, distance, tags FROM sem_chunks
              WHERE distance < 1 ORDER BY document_id, distance) best
    )""")
    semantic = ("SELECT document_id, chunk_id, 1 - distance AS score, NULL::bigint AS kw_rank, rnk AS sem_rank, tags "
                "FROM sem_ranked")
    if use_keyword and use_semantic:
        # One of the two, decided once by the statement (a one-time filter): the terms are
        # only known inside it.
        ranked = (f"SELECT * FROM ({_fused_ranking(ctes)}) fused WHERE EXISTS (SELECT FROM kw_terms) "
                  f"UNION ALL {semantic} WHERE NOT EXISTS (SELECT FROM kw_terms)")
    elif use_keyword:
        ctes.append("""
    kw_ranked AS (
        SELECT document_id, chunk_id, score, tags, row_number() OVER (ORDER BY score DESC, document_id) AS rnk
        FROM (SELECT DISTINCT ON (document_id) document_id, chunk_id, score, tags FROM kw_chunks
              ORDER BY document_id, score DESC) best
    )""")
        ranked = "SELECT document_id, chunk_id, score, rnk AS kw_rank, NULL::bigint AS sem_rank, tags FROM kw_ranked"
    else:
        ranked = semantic
    ctes.append(f"\n    ranked AS MATERIALIZED ({ranked})")
    final = f"""
    SELECT (SELECT count(*) FROM ranked),
           (SELECT coalesce(json_agg(json_build_array(tag, n) ORDER BY n DESC, tag), '[]')
            FROM (SELECT tag, count(DISTINCT document_id) AS n FROM ranked, unnest(tags) AS tag
                  WHERE cardinality(tags) > 0 GROUP BY tag ORDER BY n DESC, tag LIMIT {MAX_FACETS}) f),
           (SELECT coalesce(json_agg(json_build_array(document_id, chunk_id, score, kw_rank, sem_rank)
                                     ORDER BY score DESC, document_id), '[]')
            FROM (SELECT * FROM ranked ORDER BY score DESC, document_id LIMIT %s OFFSET %s) p)"""
    cursor.execute("WITH " + ",".join(ctes) + final, [*params, limit, offset])
    total, facets, page = cursor.fetchone()
    return total, [(tag, n) for tag, n in facets], [tuple(row) for row in page]


# Chunks hold Markdown source; a snippet is plain text, so emphasis, code ticks,
# heading hashes and list bullets are dropped (the words themselves stay).
_MARKDOWN_INLINE = re.compile(r"\*\*|__|`+|~~")
_MARKDOWN_LINE_START = re.compile(r"(^|\n)\s*(?:#{1,6}|[-*+]|\d+[.)]|>)\s+")


def _plain_snippet(headline: str) -> str:
    text = _MARKDOWN_LINE_START.sub(r"\1", headline)
    return _MARKDOWN_INLINE.sub("", text)


def _highlight(headline: str) -> str:
    escaped = html.escape(_plain_snippet(headline), quote=True)
    return escaped.replace(_MARK_START, "<mark>").replace(_MARK_STOP, "</mark>")


def _result_rows(cursor, *, user, parsed, page: list[tuple], snippets: bool = True) -> list[SearchResult]:
    if not page:
        return []
    vis, vis_params = visibility_sql(user, alias="d")
    if snippets:
        headline = "ts_headline('english', translate(c.text, %s, ''), websearch_to_tsquery('english', %s), %s)"
        headline_params = [_MARK_START + _MARK_STOP, parsed.headline_query, _HEADLINE_OPTIONS]
    else:
        headline, headline_params = "''", []
    cursor.execute(
        f"""SELECT r.ord, d.id, d.slug, d.title, d.tags, d.published_at, c.id, c.heading_path, {headline}
            FROM unnest(%s::bigint[], %s::bigint[]) WITH ORDINALITY AS r(doc_id, chunk_id, ord)
            JOIN documents_document d ON d.id = r.doc_id
            JOIN documents_chunk c ON c.id = r.chunk_id AND c.document_id = d.id
            WHERE {vis} ORDER BY r.ord""",
        [*headline_params, [row[0] for row in page], [row[1] for row in page], *vis_params],
    )
    by_ord = {row[0]: row for row in cursor.fetchall()}
    results = []
    for ordinal, (doc_id, chunk_id, score, kw_rank, sem_rank) in enumerate(page, start=1):
        row = by_ord.get(ordinal)
        if row is None:  # deleted between the two statements
            continue
        _, _, slug, title, tags, published_at, _, heading_path, headline = row
        results.append(SearchResult(
            document_id=doc_id, slug=slug, title=title, url=reverse("search:document", args=[slug]),
            snippet=_highlight(headline), score=float(score), tags=list(tags or []),
            published_at=published_at, chunk_id=chunk_id, heading_path=heading_path,
            keyword_rank=kw_rank, semantic_rank=sem_rank,
        ))
    return results


def hybrid_search(
    *,
    query: str,
    user,
    filters: SearchFilters | None = None,
    limit: int = 10,
    offset: int = 0,
    mode: str = "hybrid",
    snippets: bool = True,
) -> SearchResults:
    """Search documents visible to ``user``; best chunk per document, best documents first.

    ``mode`` is ``hybrid`` (BM25 and semantic fused by RRF), ``keyword`` or
    ``semantic``. Any text is accepted: operators are parsed, never passed to SQL as
    syntax. ``total`` counts every matching document (semantic: the nearest
    candidates), ``facets`` count tags over that whole set. ``snippets=False`` skips
    ts_headline (evaluation ranks 100 documents per query and reads no snippet).
    """
    _check_mode(mode)
    started = time.perf_counter()
    limit, offset = max(0, min(int(limit), 100)), max(0, int(offset))
    parsed = parse_query(query)
    total, degraded = 0, False
    if not parsed.is_empty:
        vector = None
        if mode in ("semantic", "hybrid"):
            vector = _embed_query(parsed.text)
            degraded = vector is None
        scope = _scope(user, filters, parsed)
        # Depth in chunks: documents have several, and a page must still fill up.
        depth = min(1000, max(settings.SEARCH_SEMANTIC_CANDIDATES, CHUNKS_PER_DOCUMENT * (offset + limit)))
        # A transaction only when SET LOCAL hnsw.* must scope to the semantic query.
        scope_block = transaction.atomic() if vector is not None else contextlib.nullcontext()
        with scope_block, connection.cursor() as cursor:
            if vector is not None:
                _configure_hnsw(cursor, depth=depth, filtered=scope.filtered)
            total, facets, page = _ranked_documents(cursor, parsed=parsed, scope=scope, mode=mode,
                                                    vector=vector, depth=depth, limit=limit, offset=offset)
            results = _result_rows(cursor, user=user, parsed=parsed, page=page, snippets=snippets)
    else:
        facets, results = [], []
    took = time.perf_counter() - started
    SEARCH_QUERIES.labels(mode=mode).inc()
    SEARCH_LATENCY.labels(mode=mode).observe(took)
    if not total:
        SEARCH_ZERO_RESULTS.labels(mode=mode).inc()
    logger.info("search.query", mode=mode, query_chars=len(parsed.raw), terms=len(parsed.words),
                total=total, took_ms=round(took * 1000, 2), degraded=degraded,
                filtered=bool(filters and not filters.is_empty))
    return SearchResults(
        query=parsed.raw, mode=mode, results=results, total=total, facets=facets,
        took_ms=round(took * 1000, 2), limit=limit, offset=offset, degraded=degraded,
    )


# --- retrieve_passages -----------------------------------------------------------------
def _text_to_embed(query: str, mode: str) -> str | None:
    """What retrieval would embed for ``query`` in ``mode``, or None (no semantic side, empty query)."""
    _check_mode(mode)
    parsed = parse_query(query)
    return None if parsed.is_empty or mode == "keyword" else parsed.text


@dataclass
class _PassageQuery:
    parsed: ParsedQuery
    scope: _Scope
    mode: str
    limit: int
    depth: int


def _passage_query(*, query: str, user, limit: int, mode: str) -> _PassageQuery | None:
    """What :func:`retrieve_passages` searches for, or None if nothing can match."""
    _check_mode(mode)
    parsed = parse_query(query)
    if parsed.is_empty or limit <= 0:
        return None
    return _PassageQuery(parsed=parsed, scope=_scope(user, None, parsed), mode=mode, limit=limit,
                         depth=max(PASSAGE_CANDIDATES, limit * 4))


def _passage_statement(q: _PassageQuery, vector) -> tuple[str, list, tuple[str, list] | None] | None:
    """The one statement (and its hnsw.* settings) retrieving ``q``'s passages, or None if
    there is no list to rank (semantic mode without a query vector)."""
    ctes, params, lists = [], [], []
    if q.mode in ("keyword", "hybrid"):
        # The query's terms and their idf are read by this same statement: no round trip of their own.
        sql, p = _keyword_chunks_cte(q.parsed, q.scope, top=q.depth)
        ctes.append(sql)
        params += p
        # LIMIT before the window function: a top-N heapsort of the matches instead of a full sort.
        ctes.append(f"""
    kw_top AS (SELECT chunk_id, document_id, score, row_number() OVER (ORDER BY score DESC, chunk_id) AS rnk
               FROM (SELECT * FROM kw_chunks ORDER BY score DESC, chunk_id LIMIT {int(q.depth)}) best)""")
        lists.append("kw_top")
    if vector is not None and q.mode != "keyword":
        sql, p = _semantic_chunks_cte(q.scope, q.depth)
        ctes.append(sql)
        binary = BinaryVector(vector)  # a prepared statement's parameter: sent as binary, not text
        params += [binary, *p, binary]
        ctes.append("""
    sem_top AS (SELECT chunk_id, document_id, 1 - distance AS score,
                       row_number() OVER (ORDER BY distance, chunk_id) AS rnk
                FROM sem_chunks WHERE distance < 1)""")
        lists.append("sem_top")
    if not lists:
        return None
    if len(lists) == 2:
        weights, k = settings.SEARCH_RRF_WEIGHTS, int(settings.SEARCH_RRF_K)
        ctes.append(f"""
    scored AS (
        SELECT coalesce(kt.chunk_id, st.chunk_id) AS chunk_id, coalesce(kt.document_id, st.document_id) AS document_id,
               coalesce({float(weights['keyword'])} / ({k} + kt.rnk), 0)
                 + coalesce({float(weights['semantic'])} / ({k} + st.rnk), 0) AS score
        FROM kw_top kt FULL OUTER JOIN sem_top st ON st.chunk_id = kt.chunk_id
    )""")
    else:
        ctes.append(f"scored AS (SELECT chunk_id, document_id, score FROM {lists[0]})")
    # The passages' text and titles are read for the ``limit`` chosen only, not every candidate.
    final = f"""
    SELECT s.document_id, s.chunk_id, d.title, d.slug, c.heading_path, c.text, s.score, c.llm_tokens
    FROM (SELECT document_id, chunk_id, score
          FROM (SELECT *, row_number() OVER (PARTITION BY document_id ORDER BY score DESC, chunk_id) AS per_doc
                FROM scored) ranked
          WHERE per_doc <= {PASSAGES_PER_DOCUMENT}
          ORDER BY score DESC, chunk_id
          LIMIT {int(q.limit)}) s
    JOIN documents_chunk c ON c.id = s.chunk_id
    JOIN documents_document d ON d.id = s.document_id
    ORDER BY s.score DESC, s.chunk_id"""
    # A prepared statement (the limits are part of its text, so a generic plan knows them), sent
    # with its hnsw.* settings in one round trip: see apps.core.db.
    setup = None if "sem_top" not in lists else _hnsw_settings(depth=q.depth, filtered=q.scope.filtered,
                                                                ef_search=settings.SEARCH_PASSAGE_EF_SEARCH)
    return "WITH " + ",".join(ctes) + final, params, setup


_SLUG_MARK = "slug-mark"


def _passages_from(rows: list[tuple]) -> list[Passage]:
    # One reverse() for all the rows: a slug is URL-safe as it is (SlugField), so it takes the place of a mark.
    document_url = reverse("search:document", args=[_SLUG_MARK]) if rows else ""
    return [
        Passage(document_id=doc_id, chunk_id=chunk_id, title=title, slug=slug,
                url=document_url.replace(_SLUG_MARK, slug), heading_path=heading_path, text=text,
                score=float(score), text_tokens=text_tokens)
        for doc_id, chunk_id, title, slug, heading_path, text, score, text_tokens in rows
    ]


def retrieve_passages(*, query: str, user, limit: int = 8, mode: str = "hybrid") -> list[Passage]:
    """The best chunks for ``query`` visible to ``user`` (for RAG), best first.

    Not grouped per document, but at most two chunks of any one document.
    Scores: hybrid = RRF of chunk ranks, keyword = BM25, semantic = cosine similarity.
    """
    q = _passage_query(query=query, user=user, limit=limit, mode=mode)
    if q is None:
        return []
    started, vector = time.perf_counter(), None
    if mode != "keyword":
        vector = _embed_query(q.parsed.text)
        started = _observe_passages("vector", started)
    statement = _passage_statement(q, vector)
    if statement is None:
        return []
    rows = fetch_prepared(statement[0], statement[1], setup=statement[2])
    _observe_passages("statement", started)
    return _passages_from(rows)


def _observe_passages(stage: str, since: float) -> float:
    """Record a stage of a passage retrieval (PASSAGES_LATENCY); returns now."""
    now = time.perf_counter()
    PASSAGES_LATENCY.labels(stage).observe(now - since)
    return now


async def _aembed_query(text: str) -> list[float] | None:
    from apps.llm.embeddings import EmbeddingError, get_embedding_backend

    try:
        # The async retrieval is chat's, and a chat question is rarely asked twice word for word
        # by readers on different processes: the shared query vectors (apps.llm.embeddings.
        # query_cache) would cost each question a Redis round trip before its embedding, on the
        # way to the first token (retrieval +0.3-0.5 ms in bench sse), and seldom save one.
        return await get_embedding_backend().aembed_query(text, shared=False)
    except EmbeddingError as exc:
        _semantic_side_lost("chat", exc)
        return None


async def _aembed_query_compact(text: str) -> array | None:
    vector = await _aembed_query(text)
    return None if vector is None else array("d", vector)


def aembed_query_soon(query: str, *, mode: str = "hybrid") -> asyncio.Task | None:
    """Start embedding ``query`` as :func:`aretrieve_passages` would, as a task on the running
    loop, for a caller that still has work to do before it can retrieve (chat checks the caller
    meanwhile): pass it as ``aretrieve_passages(query_vector=...)``. Its result is the vector, or
    None if the embedding backend is unavailable (retrieval then degrades as usual). The
    backend's ``aembed_query`` runs on the loop: an HTTP backend's request goes out there, so no
    thread takes turns with the loop on the GIL meanwhile (a local model runs in threads of its
    own). Returns None when nothing was started (``mode`` has no semantic side, or the query is
    empty)."""
    text = _text_to_embed(query, mode)
    return None if text is None else asyncio.ensure_future(_aembed_query_compact(text))


async def aretrieve_passages(*, query: str, user, limit: int = 8, mode: str = "hybrid",
                             query_vector: asyncio.Future | None = None) -> list[Passage]:
    """:func:`retrieve_passages` for async code: the statement runs on the event loop
    (:func:`apps.core.adb.afetch_prepared`). ``query_vector``: the :func:`aembed_query_soon`
    task of this very ``query`` and ``mode``; without one the query is embedded here."""
    q = _passage_query(query=query, user=user, limit=limit, mode=mode)
    if q is None:
        return []
    started, vector = time.perf_counter(), None
    if mode != "keyword":
        vector = await (query_vector if query_vector is not None else _aembed_query(q.parsed.text))
        started = _observe_passages("vector", started)
    statement = _passage_statement(q, vector)
    if statement is None:
        return []
    rows = await afetch_prepared(statement[0], statement[1], setup=statement[2])
    _observe_passages("statement", started)
    return _passages_from(rows)


# --- similar_documents -----------------------------------------------------------------
def similar_documents(*, document, user, limit: int = 5) -> list[SearchResult]:
    """Documents nearest to ``document`` (mean of its chunk vectors), visible to ``user``.

    Empty when ``user`` may not see ``document`` itself or it has no vectors yet.
    """
    parsed = parse_query("")
    scope = _scope(user, None, parsed)
    depth = max(settings.SEARCH_SEMANTIC_CANDIDATES, limit * 10)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT avg(c.embedding)::text FROM documents_chunk c
                JOIN search_document d ON d.id = c.document_id
                WHERE c.document_id = %s AND c.embedding IS NOT NULL AND {scope.where}""",
            [document.pk, *scope.params],
        )
        centroid = cursor.fetchone()[0]
        if centroid is None:
            return []
        _configure_hnsw(cursor, depth=depth, filtered=True)
        sql, params = _semantic_chunks_cte(scope, depth, exclude_document=document.pk)
        cursor.execute(
            "WITH " + sql + """
            SELECT best.document_id, best.chunk_id, 1 - best.distance, d.slug, d.title, d.tags, d.published_at
            FROM (SELECT DISTINCT ON (document_id) document_id, chunk_id, distance FROM sem_chunks
                  WHERE distance < 1 ORDER BY document_id, distance) best
            JOIN documents_document d ON d.id = best.document_id
            ORDER BY best.distance, best.document_id LIMIT %s""",
            [centroid, *params, centroid, int(limit)],
        )
        rows = cursor.fetchall()
    return [
        SearchResult(document_id=doc_id, slug=slug, title=title, url=reverse("search:document", args=[slug]),
                     snippet="", score=float(score), tags=list(tags or []), published_at=published_at,
                     chunk_id=chunk_id, semantic_rank=rank)
        for rank, (doc_id, chunk_id, score, slug, title, tags, published_at) in enumerate(rows, start=1)
    ]
