-- Housekeeping (api/housekeeping.py) deletes rows past their use, oldest first, in
-- bounded batches: these indexes find them without scanning the tables.

CREATE INDEX idempotent_responses_recorded_idx ON api.idempotent_responses (recorded_at);
CREATE INDEX login_failures_window_idx ON auth.login_failures (window_start_at);
