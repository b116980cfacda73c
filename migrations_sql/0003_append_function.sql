-- append_events: one round trip appends a batch of events to one or more streams.
--
-- The caller numbers each stream's events from its expected version + 1 and sends
-- a SHA-256 digest of each event's canonical content (ledger/chain.py). The function
-- links every event to its stream's previous event: hash = sha256(prev_hash || digest).
-- A stream that is not at the expected version fails the whole batch:
--   * behind (the previous version is missing): SQLSTATE LG001 raised here;
--   * ahead (the version is taken): unique_violation on events_stream_version_key.
-- With an idempotency key, a batch whose key was seen before appends nothing and
-- returns the first batch's rows flagged replayed; another fingerprint is LG003.

CREATE FUNCTION ledger.append_events(
    p_stream_ids      uuid[],
    p_stream_types    text[],
    p_versions        bigint[],
    p_topics          text[],
    p_states          bytea[],
    p_event_ids       uuid[],
    p_schema_versions integer[],
    p_digests         bytea[],
    p_recorded_at     timestamptz,
    p_actor           text,
    p_correlation_id  uuid,
    p_causation_id    uuid,
    p_idempotency_key text,
    p_fingerprint     bytea
) RETURNS TABLE (
    event_position  bigint,
    event_tx        xid8,
    event_stream_id uuid,
    event_version   bigint,
    event_hash      bytea,
    replayed        boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    genesis constant bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    n integer := cardinality(p_stream_ids);
    previous bytea;
    known_fingerprint bytea;
    i integer;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO ledger.idempotency_keys (key, fingerprint, recorded_at)
        VALUES (p_idempotency_key, p_fingerprint, p_recorded_at)
        ON CONFLICT (key) DO NOTHING;
        IF NOT FOUND THEN
            SELECT k.fingerprint INTO known_fingerprint
            FROM ledger.idempotency_keys k WHERE k.key = p_idempotency_key;
            IF known_fingerprint IS DISTINCT FROM p_fingerprint THEN
                RAISE EXCEPTION 'idempotency key % was used for another request', p_idempotency_key
                    USING ERRCODE = 'LG003';
            END IF;
            RETURN QUERY
                SELECT e.notification_id, e.tx, e.originator_id, e.originator_version, e.hash, true
                FROM ledger.events e
                WHERE e.idempotency_key = p_idempotency_key
                ORDER BY e.notification_id;
            RETURN;
        END IF;
    END IF;

    FOR i IN 1 .. n LOOP
        IF p_versions[i] = 1 THEN
            previous := genesis;
        ELSE
            SELECT e.hash INTO previous
            FROM ledger.events e
            WHERE e.originator_id = p_stream_ids[i] AND e.originator_version = p_versions[i] - 1;
            IF previous IS NULL THEN
                RAISE EXCEPTION 'stream % has no version %', p_stream_ids[i], p_versions[i] - 1
                    USING ERRCODE = 'LG001';
            END IF;
        END IF;

        RETURN QUERY
            INSERT INTO ledger.events AS e (
                originator_id, originator_version, topic, state, event_id, stream_type,
                schema_version, recorded_at, actor, correlation_id, causation_id,
                idempotency_key, prev_hash, hash)
            VALUES (
                p_stream_ids[i], p_versions[i], p_topics[i], p_states[i], p_event_ids[i],
                p_stream_types[i], p_schema_versions[i], p_recorded_at, p_actor,
                p_correlation_id, p_causation_id, p_idempotency_key,
                previous, sha256(previous || p_digests[i]))
            RETURNING e.notification_id, e.tx, e.originator_id, e.originator_version, e.hash, false;
    END LOOP;
END;
$$;

GRANT EXECUTE ON FUNCTION ledger.append_events TO ledger_app;
