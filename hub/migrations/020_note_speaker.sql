-- Who said a note and when (issue 17): a conversation turn stored as a note keeps its speaker and
-- the time it was said beside its body, instead of inside it. Recall boosts the notes whose
-- speaker the question names (a question about Fatima prefers what Fatima said), and the turn's
-- embedding stays about what was said: a rare name written into the text drew every turn of that
-- speaker toward any question naming them. Like `context`, both are the writer's indexing data:
-- federation does not sync them and they are not part of the content hash.
ALTER TABLE notes ADD COLUMN speaker text NOT NULL DEFAULT '';
ALTER TABLE notes ADD COLUMN said_at timestamptz;
