-- Token lineage: a token minted from another token (POST /v1/tokens) records its parent and never
-- outlives it. The rules live here, not only in the route, so that every path that revokes or
-- expires a token (API, CLI, admin, a hand-written UPDATE) takes its descendants with it.
ALTER TABLE tokens ADD COLUMN parent_id uuid REFERENCES tokens (id) ON DELETE CASCADE;

CREATE INDEX tokens_parent_id_idx ON tokens (parent_id) WHERE parent_id IS NOT NULL;

-- At birth: the same user, at most the parent's scopes, at most the parent's expiry (no expiry
-- asked, or a later one, becomes the parent's), and dead at once if the parent already is.
-- FOR SHARE waits for a revocation of the parent that is in flight, so none slips between.
CREATE FUNCTION tokens_inherit_from_parent() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    parent tokens%ROWTYPE;
BEGIN
    SELECT * INTO parent FROM tokens WHERE id = NEW.parent_id FOR SHARE;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key reports it
    END IF;
    IF NEW.user_id IS DISTINCT FROM parent.user_id THEN
        RAISE EXCEPTION 'a token can only be minted for its parent''s user'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NOT NEW.scopes <@ parent.scopes THEN
        RAISE EXCEPTION 'a token can only grant scopes its parent holds'
            USING ERRCODE = 'check_violation';
    END IF;
    -- least() ignores NULL, which here means "never expires".
    NEW.expires_at := least(NEW.expires_at, parent.expires_at);
    NEW.revoked_at := coalesce(NEW.revoked_at, parent.revoked_at);
    RETURN NEW;
END
$$;

CREATE TRIGGER tokens_inherit_from_parent
    BEFORE INSERT ON tokens
    FOR EACH ROW WHEN (NEW.parent_id IS NOT NULL)
    EXECUTE FUNCTION tokens_inherit_from_parent();

-- Revoking a token revokes its children; their own triggers carry it down the tree.
CREATE FUNCTION tokens_revoke_children() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tokens SET revoked_at = NEW.revoked_at
    WHERE parent_id = NEW.id AND revoked_at IS NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_revoke_children
    AFTER UPDATE OF revoked_at ON tokens
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL)
    EXECUTE FUNCTION tokens_revoke_children();

-- Moving a token's expiry earlier moves its children's with it, down the tree.
CREATE FUNCTION tokens_expire_children() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tokens SET expires_at = NEW.expires_at
    WHERE parent_id = NEW.id AND (expires_at IS NULL OR expires_at > NEW.expires_at);
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_expire_children
    AFTER UPDATE OF expires_at ON tokens
    FOR EACH ROW WHEN (NEW.expires_at IS NOT NULL
                       AND NEW.expires_at IS DISTINCT FROM OLD.expires_at)
    EXECUTE FUNCTION tokens_expire_children();
