-- Web accounts (issue 14): sign-in by email + password or OpenID Connect, server-side browser
-- sessions, mailed one-time links, login attempts (rate limits) and admin grants. Every secret a
-- browser or a mail holds is stored only as its SHA-256; passwords only as argon2id hashes.

-- The web sign-in of a user: an email (unique, case-insensitive) and, for a password account,
-- its argon2id hash (PHC string). An account made by OIDC has no password.
CREATE TABLE web_accounts (
    user_id           uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    email             text        NOT NULL CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$'
                                                  AND length(email) <= 254),
    password_hash     text,
    email_verified_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX web_accounts_email_idx ON web_accounts (lower(email));

-- Users the pool admin made web admins (the pool admin token needs no grant).
CREATE TABLE admin_grants (
    user_id    uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now()
);

-- A browser session: the cookie is 256 random bits, the row keeps its SHA-256. A session opened
-- with the pool admin token has no user and names that token, so rotating it ends the session.
CREATE TABLE web_sessions (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    hash           bytea       NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    user_id        uuid        REFERENCES users (id) ON DELETE CASCADE,
    admin_token_id uuid        REFERENCES tokens (id) ON DELETE CASCADE,
    method         text        NOT NULL CHECK (method IN ('password', 'oidc', 'admin_token')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    CHECK ((user_id IS NULL) = (admin_token_id IS NOT NULL))
);

CREATE INDEX web_sessions_user_idx ON web_sessions (user_id);
CREATE INDEX web_sessions_expires_idx ON web_sessions (expires_at);

-- The user's memory data key wrapped under a login secret (memory/crypto.py's AES-GCM wrap):
-- either the password (session_id NULL; the secret is argon2id(password, password_salt), never
-- stored) or one browser session (the secret is the session cookie, never stored). Useless
-- without that password or cookie. A wrap of an older generation opens nothing current.
CREATE TABLE web_key_wraps (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid        NOT NULL,
    session_id     uuid        REFERENCES web_sessions (id) ON DELETE CASCADE,
    password_salt  bytea       CHECK ((session_id IS NULL) = (password_salt IS NOT NULL)),
    generation     integer     NOT NULL,
    salt           bytea       NOT NULL,
    wrapped        bytea       NOT NULL,
    key_version    integer     NOT NULL CHECK (key_version > 0),
    kdf            text        NOT NULL,
    format_version smallint    NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (user_id, generation) REFERENCES memory_key_generations ON DELETE CASCADE
);

CREATE UNIQUE INDEX web_key_wraps_password_idx ON web_key_wraps (user_id)
    WHERE session_id IS NULL;
CREATE UNIQUE INDEX web_key_wraps_session_idx ON web_key_wraps (session_id)
    WHERE session_id IS NOT NULL;

-- One-time links sent by mail: verify an address, or reset a password. The link carries 256
-- random bits; the row keeps their SHA-256, the purpose, the address and the expiry.
CREATE TABLE web_mail_tokens (
    hash       bytea       PRIMARY KEY CHECK (octet_length(hash) = 32),
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    text        NOT NULL CHECK (purpose IN ('verify', 'reset')),
    email      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE INDEX web_mail_tokens_user_idx ON web_mail_tokens (user_id, purpose);

-- An OpenID Connect identity (issuer, subject) signs in as one user. It is linked to an existing
-- user only by that user, signed in; never by matching an email.
CREATE TABLE oidc_identities (
    issuer    text        NOT NULL,
    subject   text        NOT NULL,
    user_id   uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email     text,
    linked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);

CREATE INDEX oidc_identities_user_idx ON oidc_identities (user_id);

-- An OIDC sign-in under way: the state (hashed) with its nonce and PKCE verifier, where to go
-- next, and the signed-in user who asked to link the identity (NULL: sign in or sign up).
CREATE TABLE oidc_flows (
    state_hash    bytea       PRIMARY KEY CHECK (octet_length(state_hash) = 32),
    nonce         text        NOT NULL,
    code_verifier text        NOT NULL,
    next_path     text        NOT NULL,
    link_user_id  uuid        REFERENCES users (id) ON DELETE CASCADE,
    expires_at    timestamptz NOT NULL
);

-- Failed sign-ins, counted per client address and per account for the rate limits.
CREATE TABLE web_login_failures (
    id     bigserial   PRIMARY KEY,
    ip     text        NOT NULL,
    email  text        NOT NULL,
    at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX web_login_failures_ip_idx ON web_login_failures (ip, at);
CREATE INDEX web_login_failures_email_idx ON web_login_failures (lower(email), at);
