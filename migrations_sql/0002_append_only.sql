-- The log is append-only: UPDATE, DELETE and TRUNCATE of events are refused for
-- every role, superusers included, unless the trigger itself is disabled (which
-- the hash chain then exposes). The application role may only INSERT and SELECT.

CREATE FUNCTION ledger.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger.events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'LG002';
END;
$$;

CREATE TRIGGER events_refuse_update_delete
    BEFORE UPDATE OR DELETE ON ledger.events
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();

CREATE TRIGGER events_refuse_truncate
    BEFORE TRUNCATE ON ledger.events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Roles are cluster-wide, so another database's migration may have made it already.
DO $$
BEGIN
    CREATE ROLE ledger_app NOLOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END;
$$;

GRANT USAGE ON SCHEMA ledger TO ledger_app;
GRANT SELECT, INSERT ON ledger.events, ledger.idempotency_keys TO ledger_app;
