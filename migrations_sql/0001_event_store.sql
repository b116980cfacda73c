-- The event log: append-only, per-stream hash-chained, followable in commit order.
--
-- Column names originator_id, originator_version, topic, state and notification_id
-- are those of the eventsourcing library's PostgreSQL recorder, so that library can
-- read this table as it is (DESIGN.md point 7). notification_id is the event's
-- position: unique and increasing in insertion order, but NOT in commit order; readers
-- of the whole log follow (tx, notification_id) below the snapshot's xmin instead.

CREATE TABLE ledger.events (
    notification_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx                 xid8        NOT NULL DEFAULT pg_current_xact_id(),
    originator_id      uuid        NOT NULL,
    originator_version bigint      NOT NULL CHECK (originator_version >= 1),
    topic              text        NOT NULL CHECK (length(topic) BETWEEN 1 AND 255),
    state              bytea       NOT NULL CHECK (octet_length(state) <= 262144),
    event_id           uuid        NOT NULL,
    stream_type        text        NOT NULL CHECK (length(stream_type) BETWEEN 1 AND 64),
    schema_version     integer     NOT NULL CHECK (schema_version >= 1),
    recorded_at        timestamptz NOT NULL,
    actor              text        CHECK (length(actor) <= 255),
    correlation_id     uuid,
    causation_id       uuid,
    idempotency_key    text        CHECK (length(idempotency_key) <= 255),
    prev_hash          bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash               bytea       NOT NULL CHECK (octet_length(hash) = 32),
    CONSTRAINT events_stream_version_key UNIQUE (originator_id, originator_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

-- The committed-order follower reads by (tx, notification_id).
CREATE INDEX events_tx_position_idx ON ledger.events (tx, notification_id);
-- A retried command finds the events its first attempt appended.
CREATE INDEX events_idempotency_key_idx ON ledger.events (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One row per idempotency key: the first attempt owns it; a retry with the same
-- fingerprint gets the first result back, one with another fingerprint is refused.
CREATE TABLE ledger.idempotency_keys (
    key         text        PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint bytea,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
