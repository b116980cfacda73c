"""Setup shared by the command handler tests (this module holds no tests).

Every test makes its own users, accounts and instruments with fresh ids, emails and
symbols, so tests share the run's database without seeing each other's streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec

from commands.accounts import Deposit, OpenAccount, deposit, open_account
from commands.bootstrap import bootstrap
from commands.instruments import ListInstrument, instrument_stream_id, list_instrument
from commands.orders import FillOrder, PlaceOrder
from commands.runtime import CommandContext, CommandResult, Ledger, Loaded, Repository
from commands.users import RegisterUser, register_user, user_stream_id
from ledger.domain import account
from ledger.domain.base import decode_event
from ledger.domain.order import OrderType
from ledger.domain.registry import fold_stream
from ledger.domain.side import Side
from ledger.domain.user import Role
from ledger.errors import ConcurrencyError
from ledger.store import AppendResult, EventStore, RecordedEvent
from tests.unit.support import PASSWORD_HASH

BARRIER_TIMEOUT_S = 10.0


def d(text: str) -> Decimal:
    return Decimal(text)


def context(**given: Any) -> CommandContext:
    """A context with every id set, so tests can find them on the events."""
    fields: dict[str, Any] = {
        "actor": "tester",
        "correlation_id": uuid4(),
        "causation_id": uuid4(),
    }
    fields.update(given)
    return CommandContext(**fields)


def names(result: CommandResult) -> list[str]:
    return [type(item.event).__name__ for item in result.events]


async def new_user(ledger: Ledger, role: Role = Role.TRADER) -> UUID:
    email = f"{uuid4().hex}@example.com"
    command = RegisterUser(email=email, display_name="Ada", role=role, password_hash=PASSWORD_HASH)
    await register_user(ledger, command, context())
    return user_stream_id(email)


async def new_account(ledger: Ledger, cash: str = "0", **terms: Any) -> UUID:
    user_id = await new_user(ledger)
    await open_account(ledger, OpenAccount(user_id=user_id, currency="USD", **terms), context())
    account_id = account.account_stream_id(user_id, "USD")
    if d(cash) > 0:
        await deposit(ledger, Deposit(account_id=account_id, amount=d(cash)), context())
    return account_id


def new_symbol() -> str:
    return f"T{uuid4().hex[:12].upper()}"


async def new_instrument(ledger: Ledger, *, lot_size: str = "1", tick_size: str = "0.01") -> UUID:
    symbol = new_symbol()
    command = ListInstrument(
        symbol=symbol,
        currency="USD",
        tick_size=d(tick_size),
        lot_size=d(lot_size),
        price_precision=2,
        quantity_precision=0,
    )
    await list_instrument(ledger, command, context())
    return instrument_stream_id(symbol)


def limit_order(
    side: Side, account_id: UUID, instrument_id: UUID, quantity: str, price: str, **more: Any
) -> PlaceOrder:
    return PlaceOrder(
        order_id=more.pop("order_id", uuid4()),
        account_id=account_id,
        instrument_id=instrument_id,
        side=side,
        order_type=OrderType.LIMIT,
        quantity=d(quantity),
        limit_price=d(price),
        **more,
    )


def fill_of(
    order_id: UUID, quantity: str, price: str, fill_id: str = "", fee: str = "0"
) -> FillOrder:
    return FillOrder(
        order_id=order_id,
        fill_id=fill_id or uuid4().hex,
        quantity=d(quantity),
        price=d(price),
        fee=d(fee),
        venue="XNAS",
        executed_at=datetime.now(UTC),
    )


async def stored(store: EventStore, stream_id: UUID) -> list[RecordedEvent]:
    return await store.read_stream(stream_id)


async def folded(store: EventStore, stream_id: UUID) -> Any:
    """The stream's state folded from the log alone."""
    recorded = await store.read_stream(stream_id)
    events = [decode_event(item.topic, item.data) for item in recorded]
    return fold_stream(recorded[0].stream_type, events)


async def count_events(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ledger.events"))


def encoded(state: Any) -> bytes:
    return msgspec.json.encode(state)


class RacingRepository(Repository):
    """A real repository whose first save in each task waits until every party has
    decided: all of them decided on the same state, and then race to commit it.

    Counts the conflicts its saves met, so a test can show the race happened.
    """

    def __init__(self, store: EventStore, barrier: asyncio.Barrier) -> None:
        super().__init__(store)
        self.barrier = barrier
        self.waited: set[asyncio.Task[Any]] = set()
        self.conflicts = 0

    async def save(
        self, events: Sequence[Any], loaded: Mapping[UUID, Loaded], context: CommandContext
    ) -> AppendResult:
        task = asyncio.current_task()
        assert task is not None
        if task not in self.waited:
            self.waited.add(task)
            await asyncio.wait_for(self.barrier.wait(), BARRIER_TIMEOUT_S)
        try:
            return await super().save(events, loaded, context)
        except ConcurrencyError:
            self.conflicts += 1
            raise


def racing_ledgers(pool: asyncpg.Pool, parties: int, replicas: int) -> list[Ledger]:
    """`replicas` ledgers (as separate API processes would be, each with its own cache)
    whose first saves wait for `parties` commands in all."""
    barrier = asyncio.Barrier(parties)
    ledgers = []
    for _ in range(replicas):
        base = bootstrap(pool)
        ledgers.append(Ledger(RacingRepository(base.repository.store, barrier)))
    return ledgers


def conflicts(ledgers: Sequence[Ledger]) -> int:
    total = 0
    for ledger in ledgers:
        assert isinstance(ledger.repository, RacingRepository)
        total += ledger.repository.conflicts
    return total
