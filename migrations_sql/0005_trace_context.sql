-- The trace context of the request that appended each event: a W3C `traceparent`
-- (00-<trace id>-<span id>-<flags>), NULL for events appended outside any trace.
--
-- The relay sends it on in the JetStream message headers, so a projection's update
-- joins the request's trace (docs/adr/0009-tracing.md). It is transport metadata, not
-- part of what happened: the per-stream and global hash chains do not cover it, and
-- the eventsourcing library, which names its columns, neither reads nor writes it.
--
-- Adding a nullable column without a default changes the catalogue only: no row is
-- rewritten, so the append-only triggers (which refuse UPDATE) are not involved. The
-- bound is NOT VALID because every existing row is NULL: checking them would scan the
-- whole log under the table lock; new rows are checked as they are inserted.

ALTER TABLE ledger.events
    ADD COLUMN trace_context text,
    ADD CONSTRAINT events_trace_context_length
        CHECK (octet_length(trace_context) BETWEEN 1 AND 512) NOT VALID;
