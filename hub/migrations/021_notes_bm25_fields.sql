-- The notes' BM25 index carries what a search is filtered by (issue 17): the owner, the
-- namespace, the tags, the creation time and the deletion mark. Migration 018 indexed the text
-- only, so pg_search scored every match over every user's notes and PostgreSQL dropped the other
-- users' afterwards: 881 ms p95 at 100k notes. With these fields memory/recall.py states the
-- filters inside the BM25 query itself, so the scan visits only the notes the caller may read and
-- keeps the best k (pg_search's top-k). Keyword (untokenized) fields match a namespace or a tag
-- whole; uuid and timestamps are indexed as they are.
--
-- mutable_segment_rows = 0: every insert writes an ordinary segment, which pg_search merges in
-- the background. Its default keeps the latest rows (up to a thousand) in a "mutable" segment that
-- each search reads far more slowly: at 100k notes inserted through the API the keyword side's
-- p95 was 66 ms with it and 21 ms without; a single insert costs about 1 ms more.
--
-- Only where migration 018 could use pg_search; elsewhere the keyword side stays PostgreSQL's
-- full text.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_search') THEN
        DROP INDEX IF EXISTS notes_bm25_idx;
        CREATE INDEX notes_bm25_idx ON notes USING bm25 (
            id, title, body, context, owner_id, namespace, tags, created_at, deleted_at
        ) WITH (key_field = 'id', mutable_segment_rows = 0, text_fields = '{
            "title": {"tokenizer": {"type": "default", "stemmer": "English", "stopwords_language": "English"}},
            "body": {"tokenizer": {"type": "default", "stemmer": "English", "stopwords_language": "English"}},
            "context": {"tokenizer": {"type": "default", "stemmer": "English", "stopwords_language": "English"}},
            "namespace": {"tokenizer": {"type": "keyword"}, "fast": true},
            "tags": {"tokenizer": {"type": "keyword"}, "fast": true}
        }');
    END IF;
END
$$;
