-- The global order: one gapless `sequence` per event, assigned by the relay's leader in
-- (tx, position) order, with the global hash chain and the auditors' digests.
--
-- ledger.sequence is the single source of global order downstream (NATS messages,
-- projection checkpoints, global audit reads). Its global_hash is
-- sha256(previous global_hash || the event's hash), 32 zero bytes before sequence 1.
-- The leader writes a batch of sequence rows, the digests it completes and its cursor
-- in ledger.relay_state in one transaction (ledger/sequencer.py).

CREATE TABLE ledger.sequence (
    sequence    bigint      PRIMARY KEY CHECK (sequence >= 1),
    position    bigint      NOT NULL UNIQUE REFERENCES ledger.events (notification_id),
    tx          xid8        NOT NULL,
    global_hash bytea       NOT NULL CHECK (octet_length(global_hash) = 32),
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Checkpoints for auditors: the global hash at the end of each range of sequences.
-- A copy kept outside the database pins everything up to its last_sequence.
CREATE TABLE ledger.digests (
    last_sequence  bigint      PRIMARY KEY REFERENCES ledger.sequence (sequence),
    first_sequence bigint      NOT NULL CHECK (first_sequence BETWEEN 1 AND last_sequence),
    global_hash    bytea       NOT NULL CHECK (octet_length(global_hash) = 32),
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

-- The relay's cursor, one row: the last sequenced event's (tx, position) and sequence,
-- the last sequence published to JetStream (never ahead of the sequenced one), and the
-- last sequence that closed a digest.
CREATE TABLE ledger.relay_state (
    singleton          boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    sequenced          bigint      NOT NULL DEFAULT 0 CHECK (sequenced >= 0),
    sequenced_tx       xid8        NOT NULL DEFAULT '0',
    sequenced_position bigint      NOT NULL DEFAULT 0 CHECK (sequenced_position >= 0),
    published          bigint      NOT NULL DEFAULT 0
                                   CHECK (published BETWEEN 0 AND sequenced),
    digested           bigint      NOT NULL DEFAULT 0 CHECK (digested BETWEEN 0 AND sequenced),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

INSERT INTO ledger.relay_state DEFAULT VALUES;

-- The refusal names the table it protects (it named ledger.events alone before); the
-- message for ledger.events reads as it did, and the SQLSTATE is unchanged.
CREATE OR REPLACE FUNCTION ledger.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only: % is not allowed', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'LG002';
END;
$$;

CREATE TRIGGER sequence_refuse_update_delete
    BEFORE UPDATE OR DELETE ON ledger.sequence
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();

CREATE TRIGGER sequence_refuse_truncate
    BEFORE TRUNCATE ON ledger.sequence
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

CREATE TRIGGER digests_refuse_update_delete
    BEFORE UPDATE OR DELETE ON ledger.digests
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();

CREATE TRIGGER digests_refuse_truncate
    BEFORE TRUNCATE ON ledger.digests
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

GRANT SELECT, INSERT ON ledger.sequence, ledger.digests TO ledger_app;
-- The cursor is the one row the relay moves forward; it is never inserted or deleted.
GRANT SELECT, UPDATE ON ledger.relay_state TO ledger_app;
