"""Support for the projection tests: number the log, project it, and fold it independently.

`expected_rows` is the reference the read models are held to: every stream of the log
folded with the domain's own `evolve` (ledger.domain.registry), then mapped to the rows a
read model should hold. It shares no code with projections/.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from ledger import sequencer
from ledger.domain import Event, decode_event
from ledger.domain.account import TradeSettled
from ledger.domain.order import OrderFilled, OrderPartiallyFilled
from ledger.domain.position import TradeBooked, average_cost
from ledger.domain.registry import fold_stream
from ledger.domain.side import Side
from projections import source
from projections.engine import apply_batch
from projections.registry import PROJECTIONS

Rows = dict[str, list[tuple[Any, ...]]]


async def sequence_all(connection: asyncpg.Connection) -> int:
    """Number every committed event as the relay's leader does; return the head."""
    cursor = await sequencer.load_cursor(connection)
    while True:
        events = await sequencer.read_unsequenced(connection, cursor, limit=1_000)
        if not events:
            return cursor.sequence
        batch = sequencer.assign(cursor, events, digest_every=100)
        await sequencer.record(connection, batch)
        cursor = batch.after


async def read_log(connection: asyncpg.Connection) -> list[tuple[int, UUID, str, int, Event]]:
    """(sequence, stream id, stream type, version, event) of every sequenced domain event."""
    found, after = [], 0
    while batch := await source.read_after(connection, after, limit=1_000):
        after = batch[-1].sequence
        for logged in batch:
            if logged.topic.startswith("ledger.domain."):
                event = decode_event(logged.topic, bytes(logged.data))
                found.append(
                    (logged.sequence, logged.stream_id, logged.stream_type, logged.version, event)
                )
    return found


async def project_all(
    connection: asyncpg.Connection, seed: int, *, schema: str = "read", up_to: int = 2**62
) -> None:
    """Apply the log to every projection in random-sized batches."""
    sizes = random.Random(seed)
    for projection in PROJECTIONS.values():
        after = 0
        while batch := await source.read_after(
            connection, after, up_to=up_to, limit=sizes.randint(1, 300)
        ):
            result = await apply_batch(connection, projection, batch, schema=schema)
            after = result.after


async def snapshot(connection: asyncpg.Connection, schema: str = "read") -> Rows:
    """Every row of every read-model table (checkpoints aside), sorted."""
    rows: Rows = {}
    for projection in PROJECTIONS.values():
        for table in projection.tables:
            records = await connection.fetch(f"SELECT * FROM {schema}.{table}")
            rows[table] = sorted(tuple(record.values()) for record in records)
    return rows


def _streams(log: list[tuple[int, UUID, str, int, Event]]) -> dict[UUID, tuple[str, list[Event]]]:
    streams: dict[UUID, tuple[str, list[Event]]] = {}
    for _, stream_id, stream_type, _, event in log:
        streams.setdefault(stream_id, (stream_type, []))[1].append(event)
    return streams


def _json(value: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(value))


def _row(table: str, state: Any, **given: Any) -> tuple[Any, ...]:
    """A row of `table` in COLUMNS order: each column from `given`, else the state's field."""
    return tuple(given[name] if name in given else getattr(state, name) for name in COLUMNS[table])


def expected_rows(log: list[tuple[int, UUID, str, int, Event]]) -> Rows:
    """The rows every read model should hold, from folding the log with the domain."""
    states: dict[str, list[tuple[UUID, int, Any]]] = defaultdict(list)
    for stream_id, (stream_type, events) in _streams(log).items():
        states[stream_type].append((stream_id, len(events), fold_stream(stream_type, events)))
    rows: Rows = defaultdict(list)
    for _, version, u in states["user"]:
        rows["users"].append(_row("users", u, version=version))
    for _, version, a in states["account"]:
        rows["accounts"].append(_row("accounts", a, version=version))
    price_precision = {}
    for _, version, i in states["instrument"]:
        price_precision[i.instrument_id] = i.price_precision
        rows["instruments"].append(_row("instruments", i, version=version))
        rows["position_instruments"].append(_row("position_instruments", i))
    for _, version, s in states["strategy"]:
        parameters = _json(s.parameters)
        rows["strategies"].append(_row("strategies", s, parameters=parameters, version=version))
    for _, _, g in states["signal"]:
        reasons, indicators = _json(list(g.reasons)), _json(g.indicators)
        rows["signals"].append(_row("signals", g, reasons=reasons, indicators=indicators))
    for _, version, o in states["order"]:
        rows["orders"].append(_row("orders", o, fill_count=len(o.fill_ids), version=version))
    position_account = {}
    for stream_id, version, p in states["position"]:
        position_account[stream_id] = p.account_id
        cost = average_cost(p, price_precision[p.instrument_id])
        rows["positions"].append(
            _row("positions", p, position_id=stream_id, average_cost=cost, version=version)
        )
        rows["daily_pnl_positions"].append(_row("daily_pnl_positions", p, position_id=stream_id))
    _events_rows(log, rows, position_account)
    return {table: sorted(found) for table, found in rows.items()}


def _events_rows(
    log: list[tuple[int, UUID, str, int, Event]], rows: Rows, position_account: dict[UUID, UUID]
) -> None:
    """Rows that are a fold of events rather than of one stream's state."""
    trades: dict[tuple[UUID, str], dict[str, Any]] = defaultdict(dict)
    days: dict[tuple[UUID, Any], dict[str, Any]] = {}
    for sequence, stream_id, _, _, event in log:
        if isinstance(event, OrderPartiallyFilled | OrderFilled):
            given = {"order_id": stream_id, "cash_amount": event.cash_amount, "sequence": sequence}
            rows["order_fills"].append(_row("order_fills", event.fill, **given))
        elif isinstance(event, TradeSettled):
            trade = trades[(event.order_id, event.fill_id)]
            trade.setdefault("sequence", sequence)
            trade.update(msgspec.structs.asdict(event))
            trade.update(account_id=stream_id, settled_at=event.occurred_at)
        elif isinstance(event, TradeBooked):
            trade = trades[(event.order_id, event.fill_id)]
            trade.setdefault("sequence", sequence)
            trade.update(realised_pnl=event.realised_pnl_change, executed_at=event.executed_at)
            account_id = position_account[stream_id]
            key = (account_id, event.executed_at.astimezone(UTC).date())
            zero = Decimal(0)
            day = days.setdefault(
                key,
                {"account_id": account_id, "day": key[1], "realised_pnl": zero, "fees": zero,
                 "trade_count": 0, "bought_notional": zero, "sold_notional": zero},
            )  # fmt: skip
            notional = event.quantity * event.price
            day["realised_pnl"] += event.realised_pnl_change
            day["fees"] += event.fee
            day["trade_count"] += 1
            day["bought_notional" if event.side is Side.BUY else "sold_notional"] += notional
    for trade in trades.values():
        rows["trades"].append(_row("trades", None, **trade))
    for day in days.values():
        rows["daily_pnl"].append(
            _row("daily_pnl", None, net_pnl=day["realised_pnl"] - day["fees"], **day)
        )


# Columns of each table compared with the fold, named as both the table and the state do.
COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("user_id", "email", "display_name", "role", "password_hash", "token_version",
              "disabled", "registered_at", "updated_at", "version"),
    "accounts": ("account_id", "user_id", "currency", "allow_short_selling", "fee_rate",
                 "max_order_notional", "available", "reserved", "opened_at", "updated_at",
                 "version"),
    "instruments": ("instrument_id", "symbol", "currency", "tick_size", "lot_size",
                    "price_precision", "quantity_precision", "status", "listed_at",
                    "updated_at", "version"),
    "position_instruments": ("instrument_id", "price_precision"),
    "strategies": ("strategy_id", "name", "owner_id", "parameters", "active", "created_at",
                   "updated_at", "version"),
    "signals": ("signal_id", "strategy_id", "instrument_id", "action", "strength", "reasons",
                "indicators", "emitted_at"),
    "orders": ("order_id", "account_id", "instrument_id", "side", "order_type", "quantity",
               "limit_price", "stop_price", "time_in_force", "signal_id", "client_order_id",
               "status", "risk_price", "hold_price", "hold_amount", "filled_quantity",
               "filled_notional", "cash_amount", "fees", "fill_count", "reason_code", "reason",
               "placed_at", "updated_at", "version"),
    "order_fills": ("order_id", "fill_id", "quantity", "price", "fee", "cash_amount", "venue",
                    "executed_at", "sequence"),
    "trades": ("order_id", "fill_id", "account_id", "instrument_id", "side", "quantity", "price",
               "fee", "cash_amount", "realised_pnl", "executed_at", "settled_at", "sequence"),
    "positions": ("position_id", "account_id", "instrument_id", "quantity", "cost_basis",
                  "average_cost", "realised_pnl", "fees_paid", "reserved_quantity",
                  "trade_count", "opened_at", "updated_at", "version"),
    "daily_pnl_positions": ("position_id", "account_id"),
    "daily_pnl": ("account_id", "day", "realised_pnl", "fees", "net_pnl", "trade_count",
                  "bought_notional", "sold_notional"),
}  # fmt: skip

JSON_COLUMNS = {"parameters", "reasons", "indicators"}


async def actual_rows(connection: asyncpg.Connection) -> Rows:
    """The read models' rows, in the columns and order of expected_rows."""
    found: Rows = {}
    for table, columns in COLUMNS.items():
        records = await connection.fetch(f"SELECT {', '.join(columns)} FROM read.{table}")
        names = columns
        found[table] = sorted(
            tuple(
                msgspec.json.decode(value) if name in JSON_COLUMNS else value
                for name, value in zip(names, record.values(), strict=True)
            )
            for record in records
        )
    return found
