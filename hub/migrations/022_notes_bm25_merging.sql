-- The notes' BM25 index merges its segments as notes are written (issue 17). Every statement
-- that writes notes adds a segment, and a keyword search opens each one. pg_search merges them
-- in a background worker only when it is in shared_preload_libraries, which the embedded
-- server (and many others) does not set; without it a store written one note at a time kept
-- 200 to 300 segments (1,000 and 5,000 single writes), and the keyword side's p50 followed:
-- 18.0 ms at 1,000 notes, 11.4 at 5,000. Merging in the foreground by layers of size (segments
-- whose sizes add up to 10 KB become one, then 100 KB, 1 MB, ...) kept 9 and 12 segments and
-- took those to 8.0 and 8.3 ms; a single write's p50 stayed 1.6-2.0 ms, its p99 rose from about
-- 3 to 7-8 ms (the writes that merge). A server with the background worker merges there too.
DO $$
BEGIN
    IF to_regclass('notes_bm25_idx') IS NOT NULL THEN
        ALTER INDEX notes_bm25_idx SET (layer_sizes = '10KB, 100KB, 1MB, 10MB, 100MB, 1GB');
    END IF;
END
$$;
