"""BM25 postings kept current by PostgreSQL triggers on documents_chunk.

The documents pipeline writes chunks and their ``search_vector`` in one
transaction and knows nothing about search; these triggers turn every change of
``documents_chunk.search_vector`` into rows of ``search_posting`` (one per
lexeme and chunk: term frequency, chunk length, document id) in the same
transaction, so keyword ranking can never see half a document.

* ``search_posting``: primary key (lexeme, chunk_id) INCLUDE (tf, dl,
  document_id) — the covering index a BM25 query reads with an index-only scan.
  Document frequency is ``count(*)`` over the same rows the query reads anyway,
  so it is exact at every moment and no writer ever updates a shared per-lexeme
  counter (no hot rows, no deadlocks between concurrent writers on common terms).
* ``search_corpus_stats``: N (chunks) and total length, split into 64 slots
  chosen by backend pid; a transaction only ever locks its own slot row, so
  concurrent writers cannot deadlock and rarely wait. Readers sum the slots.
* tf is the number of positions a lexeme has in the tsvector (title 'A' and body
  'B' both count); tsvector keeps at most 256 positions per lexeme, so tf is
  capped there — irrelevant for ~200-token chunks.

Statement-level triggers with transition tables handle INSERT and DELETE
(including deletes cascaded from documents) in one set-based statement each;
UPDATE OF search_vector is row-level because PostgreSQL does not allow
transition tables on column-specific triggers. TRUNCATE of chunks (test
database flushes) empties postings and stats.
"""

from django.db import migrations

STATS_SLOTS = 64

FORWARD = f"""
CREATE TABLE search_posting (
    lexeme text COLLATE "C" NOT NULL,
    chunk_id bigint NOT NULL,
    document_id bigint NOT NULL,
    tf integer NOT NULL,
    dl integer NOT NULL,
    CONSTRAINT search_posting_pkey PRIMARY KEY (lexeme, chunk_id) INCLUDE (tf, dl, document_id)
);
CREATE INDEX search_posting_chunk_idx ON search_posting (chunk_id);

CREATE TABLE search_corpus_stats (
    slot integer PRIMARY KEY,
    chunks bigint NOT NULL DEFAULT 0,
    total_length bigint NOT NULL DEFAULT 0
);

-- Postings of one chunk: tf per lexeme and the chunk length (sum of tf).
CREATE FUNCTION search_postings_of(p_chunk_id bigint, p_document_id bigint, sv tsvector)
RETURNS TABLE (lexeme text, chunk_id bigint, document_id bigint, tf integer, dl integer)
LANGUAGE sql IMMUTABLE AS $fn$
    WITH terms AS (
        SELECT t.lexeme, greatest(coalesce(array_length(t.positions, 1), 1), 1) AS tf
        FROM unnest(sv) AS t
    )
    SELECT lexeme, p_chunk_id, p_document_id, tf, (sum(tf) OVER ())::integer FROM terms
$fn$;

CREATE FUNCTION search_stats_add(d_chunks bigint, d_length bigint) RETURNS void
LANGUAGE sql AS $fn$
    INSERT INTO search_corpus_stats AS s (slot, chunks, total_length)
    SELECT pg_backend_pid() % {STATS_SLOTS}, d_chunks, d_length WHERE d_chunks <> 0 OR d_length <> 0
    ON CONFLICT (slot) DO UPDATE
        SET chunks = s.chunks + EXCLUDED.chunks, total_length = s.total_length + EXCLUDED.total_length
$fn$;

CREATE FUNCTION search_chunk_after_insert() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE n bigint; len bigint;
BEGIN
    WITH ins AS (
        INSERT INTO search_posting (lexeme, chunk_id, document_id, tf, dl)
        SELECT p.* FROM new_rows nr,
             LATERAL search_postings_of(nr.id, nr.document_id, nr.search_vector) p
        RETURNING chunk_id, dl
    ), per_chunk AS (SELECT chunk_id, max(dl) AS dl FROM ins GROUP BY chunk_id)
    SELECT count(*), coalesce(sum(dl), 0) INTO n, len FROM per_chunk;
    PERFORM search_stats_add(n, len);
    RETURN NULL;
END $fn$;

CREATE FUNCTION search_chunk_after_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE n bigint; len bigint;
BEGIN
    WITH gone AS (
        DELETE FROM search_posting p USING old_rows o WHERE p.chunk_id = o.id
        RETURNING p.chunk_id, p.dl
    ), per_chunk AS (SELECT chunk_id, max(dl) AS dl FROM gone GROUP BY chunk_id)
    SELECT count(*), coalesce(sum(dl), 0) INTO n, len FROM per_chunk;
    PERFORM search_stats_add(-n, -len);
    RETURN NULL;
END $fn$;

CREATE FUNCTION search_chunk_after_update() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE old_n bigint; old_len bigint; new_n bigint; new_len bigint;
BEGIN
    WITH gone AS (DELETE FROM search_posting WHERE chunk_id = OLD.id RETURNING dl)
    SELECT least(count(*), 1), coalesce(max(dl), 0) INTO old_n, old_len FROM gone;
    WITH ins AS (
        INSERT INTO search_posting (lexeme, chunk_id, document_id, tf, dl)
        SELECT * FROM search_postings_of(NEW.id, NEW.document_id, NEW.search_vector)
        RETURNING dl
    )
    SELECT least(count(*), 1), coalesce(max(dl), 0) INTO new_n, new_len FROM ins;
    PERFORM search_stats_add(new_n - old_n, new_len - old_len);
    RETURN NULL;
END $fn$;

CREATE FUNCTION search_chunk_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE search_posting, search_corpus_stats;
    RETURN NULL;
END $fn$;

CREATE TRIGGER search_chunk_insert AFTER INSERT ON documents_chunk
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION search_chunk_after_insert();
CREATE TRIGGER search_chunk_delete AFTER DELETE ON documents_chunk
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION search_chunk_after_delete();
CREATE TRIGGER search_chunk_update AFTER UPDATE OF search_vector, document_id ON documents_chunk
    FOR EACH ROW WHEN (OLD.search_vector IS DISTINCT FROM NEW.search_vector OR OLD.document_id <> NEW.document_id)
    EXECUTE FUNCTION search_chunk_after_update();
CREATE TRIGGER search_chunk_truncate AFTER TRUNCATE ON documents_chunk
    FOR EACH STATEMENT EXECUTE FUNCTION search_chunk_after_truncate();

-- Chunks that existed before this migration.
INSERT INTO search_posting (lexeme, chunk_id, document_id, tf, dl)
SELECT p.* FROM documents_chunk c,
     LATERAL search_postings_of(c.id, c.document_id, c.search_vector) p;
INSERT INTO search_corpus_stats (slot, chunks, total_length)
SELECT 0, count(*), coalesce(sum(dl), 0) FROM (SELECT DISTINCT chunk_id, dl FROM search_posting) s;
"""

REVERSE = """
DROP TRIGGER IF EXISTS search_chunk_truncate ON documents_chunk;
DROP TRIGGER IF EXISTS search_chunk_update ON documents_chunk;
DROP TRIGGER IF EXISTS search_chunk_delete ON documents_chunk;
DROP TRIGGER IF EXISTS search_chunk_insert ON documents_chunk;
DROP FUNCTION IF EXISTS search_chunk_after_truncate();
DROP FUNCTION IF EXISTS search_chunk_after_update();
DROP FUNCTION IF EXISTS search_chunk_after_delete();
DROP FUNCTION IF EXISTS search_chunk_after_insert();
DROP FUNCTION IF EXISTS search_stats_add(bigint, bigint);
DROP FUNCTION IF EXISTS search_postings_of(bigint, bigint, tsvector);
DROP TABLE IF EXISTS search_corpus_stats;
DROP TABLE IF EXISTS search_posting;
"""


class Migration(migrations.Migration):
    dependencies = [("documents", "0002_chunk_embedding_hnsw")]
    operations = [migrations.RunSQL(FORWARD, reverse_sql=REVERSE)]
