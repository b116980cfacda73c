-- Indexes for the API's read-model queries (api/queries/): every list is paged by keyset
-- on (sort key, id), newest first by default, so an unfiltered list needs an index on
-- exactly that pair to read one page without sorting the whole table. Filtered lists use
-- the indexes of 0010 (by account, status, instrument, strategy, owner).
--
-- Unnamed on purpose, like 0010's: a rebuild copies them with LIKE ... INCLUDING ALL and
-- PostgreSQL gives the copies the same names. Plain CREATE INDEX (not CONCURRENTLY): a
-- migration is one transaction, and the read tables are small next to the log; the
-- projection workers wait for the lock, the API keeps reading.

CREATE INDEX ON read.accounts (opened_at, account_id);
CREATE INDEX ON read.orders (placed_at, order_id);
CREATE INDEX ON read.trades (executed_at, order_id, fill_id);
CREATE INDEX ON read.positions (opened_at, position_id);
CREATE INDEX ON read.strategies (created_at, strategy_id);
CREATE INDEX ON read.users (registered_at, user_id);
