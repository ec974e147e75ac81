-- A user's say on overflow to peer pools (docs/federation.md, "Overflow"): whether their chats
-- may be served by a peer when this pool cannot serve them soon (on unless turned off), and
-- whether recalled memory and their identity may travel with such a chat (off unless turned on).
ALTER TABLE user_preferences
    ADD COLUMN federation_chat boolean NOT NULL DEFAULT true,
    ADD COLUMN federation_memory boolean NOT NULL DEFAULT false;
