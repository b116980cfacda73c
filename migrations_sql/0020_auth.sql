-- The API's sign-in state: credentials, refresh tokens, revoked access tokens, lockout.
--
-- Users are event-sourced (their stream is the truth); auth.credentials is the API's
-- own lookup, written in the same request as the command that changes a user, so that
-- sign-in and revocation never wait on a projection. token_version mirrors the user's:
-- a token whose version is not the current one is refused.

CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.credentials (
    user_id       uuid        PRIMARY KEY,
    email         text        NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254),
    password_hash text        NOT NULL CHECK (length(password_hash) <= 512),
    role          text        NOT NULL
                              CHECK (role IN ('admin', 'trader', 'analyst', 'auditor', 'execution')),
    token_version integer     NOT NULL DEFAULT 1 CHECK (token_version >= 1),
    disabled      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Refresh tokens are opaque; only their SHA-256 is kept. Each sign-in starts a family;
-- a refresh marks its token used and issues the next one in the same family. A used
-- token presented again revokes the whole family (the token was stolen or replayed).
CREATE TABLE auth.refresh_tokens (
    token_hash    bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    family_id     uuid        NOT NULL,
    user_id       uuid        NOT NULL REFERENCES auth.credentials (user_id),
    token_version integer     NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    revoked_at    timestamptz
);

CREATE INDEX refresh_tokens_family_idx ON auth.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON auth.refresh_tokens (user_id);
CREATE INDEX refresh_tokens_expires_idx ON auth.refresh_tokens (expires_at);

-- Access tokens revoked before their expiry (logout), by jti, kept until they expire.
CREATE TABLE auth.revoked_access_tokens (
    jti        text        PRIMARY KEY CHECK (length(jti) <= 64),
    expires_at timestamptz NOT NULL
);

CREATE INDEX revoked_access_tokens_expires_idx ON auth.revoked_access_tokens (expires_at);

-- Failed sign-ins per email (existing or not, so a lockout reveals nothing), counted
-- in a window that starts at the first failure.
CREATE TABLE auth.login_failures (
    email           text        PRIMARY KEY CHECK (length(email) <= 254),
    failures        integer     NOT NULL CHECK (failures >= 1),
    window_start_at timestamptz NOT NULL
);

GRANT USAGE ON SCHEMA auth TO ledger_app;
GRANT SELECT, INSERT, UPDATE ON auth.credentials TO ledger_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON auth.refresh_tokens, auth.revoked_access_tokens,
    auth.login_failures TO ledger_app;
