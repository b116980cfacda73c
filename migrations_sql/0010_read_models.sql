-- The read models: one table (or a few) per projection in schema `read`, and each
-- projection's checkpoint. Built by projections/ from the events in global `sequence`
-- order; the rows and the checkpoint of a batch are written in one transaction.
--
-- Money and quantities are NUMERIC (never float), times timestamptz. Indexes are left
-- unnamed on purpose: a rebuild creates its fresh tables with
-- CREATE TABLE ... (LIKE read.<table> INCLUDING ALL), which names the copied indexes the
-- same way PostgreSQL named these, so a table swapped in carries the same index names.
-- There are no foreign keys between read tables: each projection is rebuilt on its own.
-- A projection reads only its own tables, never another projection's.

CREATE SCHEMA read;

-- One row per projection: the last sequence applied; failing/last_error/parked_sequence
-- say that a poison event stopped it (and which one), for /ready and the metrics.
CREATE TABLE read.checkpoints (
    projection      text        PRIMARY KEY CHECK (length(projection) BETWEEN 1 AND 63),
    sequence        bigint      NOT NULL DEFAULT 0 CHECK (sequence >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    failing         boolean     NOT NULL DEFAULT false,
    last_error      text        CHECK (length(last_error) <= 4000),
    parked_sequence bigint      CHECK (parked_sequence >= 1)
);

-- Rounding rule 5 of ledger/domain/money.py, exactly: numerator / denominator rounded
-- half-even to `digits` places, for non-negative numerator and positive denominator.
-- Integer division on NUMERIC is exact, so the tie test is exact too.
CREATE FUNCTION read.divide_half_even(numerator numeric, denominator numeric, digits integer)
RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ((CASE
                 WHEN 2 * q.remainder > denominator THEN q.quotient + 1
                 WHEN 2 * q.remainder < denominator THEN q.quotient
                 ELSE q.quotient + mod(q.quotient, 2)
             END)::text || 'e-' || digits)::numeric
    FROM (
        SELECT div(numerator * ('1e' || digits)::numeric, denominator) AS quotient,
               numerator * ('1e' || digits)::numeric
                 - div(numerator * ('1e' || digits)::numeric, denominator) * denominator
                 AS remainder
    ) AS q
$$;

-- users ---------------------------------------------------------------------------
CREATE TABLE read.users (
    user_id         uuid        PRIMARY KEY,
    email           text        NOT NULL UNIQUE,
    display_name    text        NOT NULL,
    role            text        NOT NULL,
    password_hash   text        NOT NULL,
    token_version   integer     NOT NULL,
    disabled        boolean     NOT NULL,
    disabled_reason text,
    registered_at   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL
);
CREATE INDEX ON read.users (role, user_id);

-- accounts (balances by currency: one account per user and currency) -----------
CREATE TABLE read.accounts (
    account_id          uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL,
    currency            text        NOT NULL,
    allow_short_selling boolean     NOT NULL,
    fee_rate            numeric     NOT NULL,
    max_order_notional  numeric,
    available           numeric     NOT NULL,
    reserved            numeric     NOT NULL,
    opened_at           timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    version             bigint      NOT NULL,
    UNIQUE (user_id, currency)
);
CREATE INDEX ON read.accounts (currency);

-- instruments ----------------------------------------------------------------------
CREATE TABLE read.instruments (
    instrument_id      uuid        PRIMARY KEY,
    symbol             text        NOT NULL UNIQUE,
    currency           text        NOT NULL,
    tick_size          numeric     NOT NULL,
    lot_size           numeric     NOT NULL,
    price_precision    integer     NOT NULL,
    quantity_precision integer     NOT NULL,
    status             text        NOT NULL,
    status_reason      text,
    listed_at          timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            bigint      NOT NULL
);
CREATE INDEX ON read.instruments (status, symbol);

-- strategies -------------------------------------------------------------------------
CREATE TABLE read.strategies (
    strategy_id uuid        PRIMARY KEY,
    name        text        NOT NULL,
    owner_id    uuid        NOT NULL,
    parameters  jsonb       NOT NULL,
    active      boolean     NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    version     bigint      NOT NULL
);
CREATE INDEX ON read.strategies (owner_id, created_at);
CREATE INDEX ON read.strategies (active, created_at);

-- signals (indicators as JSON strings, so decimals stay exact) ----------------------
CREATE TABLE read.signals (
    signal_id     uuid        PRIMARY KEY,
    strategy_id   uuid        NOT NULL,
    instrument_id uuid        NOT NULL,
    action        text        NOT NULL,
    strength      numeric     NOT NULL,
    reasons       jsonb       NOT NULL,
    indicators    jsonb       NOT NULL,
    emitted_at    timestamptz NOT NULL,
    sequence      bigint      NOT NULL
);
CREATE INDEX ON read.signals (strategy_id, emitted_at);
CREATE INDEX ON read.signals (instrument_id, emitted_at);
CREATE INDEX ON read.signals (emitted_at);

-- orders and their fills -------------------------------------------------------------
CREATE TABLE read.orders (
    order_id        uuid        PRIMARY KEY,
    account_id      uuid        NOT NULL,
    instrument_id   uuid        NOT NULL,
    side            text        NOT NULL,
    order_type      text        NOT NULL,
    quantity        numeric     NOT NULL,
    limit_price     numeric,
    stop_price      numeric,
    time_in_force   text        NOT NULL,
    signal_id       uuid,
    client_order_id text,
    status          text        NOT NULL,
    risk_price      numeric,
    hold_price      numeric,
    hold_amount     numeric     NOT NULL,
    filled_quantity numeric     NOT NULL,
    filled_notional numeric     NOT NULL,
    cash_amount     numeric     NOT NULL,
    fees            numeric     NOT NULL,
    fill_count      integer     NOT NULL,
    reason_code     text,
    reason          text,
    placed_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL
);
CREATE INDEX ON read.orders (account_id, placed_at, order_id);
CREATE INDEX ON read.orders (account_id, status, placed_at);
CREATE INDEX ON read.orders (status, placed_at);
CREATE INDEX ON read.orders (instrument_id, placed_at);
CREATE INDEX ON read.orders (signal_id) WHERE signal_id IS NOT NULL;

CREATE TABLE read.order_fills (
    order_id    uuid        NOT NULL,
    fill_id     text        NOT NULL,
    quantity    numeric     NOT NULL,
    price       numeric     NOT NULL,
    fee         numeric     NOT NULL,
    cash_amount numeric     NOT NULL,
    venue       text        NOT NULL,
    executed_at timestamptz NOT NULL,
    sequence    bigint      NOT NULL,
    PRIMARY KEY (order_id, fill_id)
);
CREATE INDEX ON read.order_fills (executed_at);

-- trades: one per fill, from the account's TradeSettled (account, cash) and the
-- position's TradeBooked (execution time, realised P&L). Both are upserted by
-- (order_id, fill_id), so either may come first; a column stays NULL until its event.
CREATE TABLE read.trades (
    order_id        uuid        NOT NULL,
    fill_id         text        NOT NULL,
    account_id      uuid,
    instrument_id   uuid,
    side            text        NOT NULL,
    quantity        numeric     NOT NULL,
    price           numeric     NOT NULL,
    fee             numeric     NOT NULL,
    cash_amount     numeric,
    realised_pnl    numeric,
    executed_at     timestamptz,
    settled_at      timestamptz,
    sequence        bigint      NOT NULL,
    PRIMARY KEY (order_id, fill_id)
);
CREATE INDEX ON read.trades (account_id, executed_at);
CREATE INDEX ON read.trades (instrument_id, executed_at);
CREATE INDEX ON read.trades (executed_at);

-- positions (average cost by rounding rule 5, hence each instrument's price precision)
CREATE TABLE read.positions (
    position_id       uuid        PRIMARY KEY,
    account_id        uuid        NOT NULL,
    instrument_id     uuid        NOT NULL,
    quantity          numeric     NOT NULL,
    cost_basis        numeric     NOT NULL,
    average_cost      numeric,
    realised_pnl      numeric     NOT NULL,
    fees_paid         numeric     NOT NULL,
    reserved_quantity numeric     NOT NULL,
    trade_count       integer     NOT NULL,
    opened_at         timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    version           bigint      NOT NULL,
    UNIQUE (account_id, instrument_id)
);
CREATE INDEX ON read.positions (instrument_id);

CREATE TABLE read.position_instruments (
    instrument_id   uuid    PRIMARY KEY,
    price_precision integer NOT NULL
);

-- daily P&L per account, by the UTC day of each trade's execution ---------------------
CREATE TABLE read.daily_pnl (
    account_id      uuid    NOT NULL,
    day             date    NOT NULL,
    realised_pnl    numeric NOT NULL,
    fees            numeric NOT NULL,
    net_pnl         numeric GENERATED ALWAYS AS (realised_pnl - fees) STORED,
    trade_count     integer NOT NULL,
    bought_notional numeric NOT NULL,
    sold_notional   numeric NOT NULL,
    PRIMARY KEY (account_id, day)
);
CREATE INDEX ON read.daily_pnl (day);

CREATE TABLE read.daily_pnl_positions (
    position_id uuid PRIMARY KEY,
    account_id  uuid NOT NULL
);

-- The API reads; the projection workers run as the owner (they rename tables on rebuild).
DO $$
BEGIN
    CREATE ROLE ledger_app NOLOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END;
$$;
GRANT USAGE ON SCHEMA read TO ledger_app;
GRANT SELECT ON ALL TABLES IN SCHEMA read TO ledger_app;
