-- The API's idempotent command responses (Idempotency-Key).
--
-- The event store dedupes appends by key too; this table keeps what the client was
-- answered (ids, consistency token), so a retry gets the very same body back.

CREATE SCHEMA IF NOT EXISTS api;

-- Idempotent command responses: the first successful answer to (user, key), replayed
-- to a retry with the same request fingerprint; another fingerprint is a conflict.
CREATE TABLE api.idempotent_responses (
    user_id     uuid        NOT NULL,
    key         text        NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    status      integer     NOT NULL,
    body        bytea       NOT NULL CHECK (octet_length(body) <= 65536),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

GRANT USAGE ON SCHEMA api TO ledger_app;
GRANT SELECT, INSERT, DELETE ON api.idempotent_responses TO ledger_app;
