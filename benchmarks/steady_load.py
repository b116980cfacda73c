"""Real commands at a steady rate, and how long each takes to show in its read model.

Commands go through the command layer (commands/bootstrap.py) as the API sends them:
deposits (accounts read model), buy orders placed and fills of open orders (orders read
model), on funded accounts made beforehand. The schedule is open-loop: command n starts
at n / rate seconds whatever the earlier ones are doing (at most IN_FLIGHT_MAX at once;
a late start is reported), so a slow path shows up as lag, not as a slower rate.

Visibility: a command's commit time is when its handler returns; it is visible when its
read model's checkpoint (read.checkpoints) reaches the sequence of its last event. A
watcher polls the checkpoints every POLL_S (one query for both) and maps newly applied
sequences to log positions, so a lag is from commit to the first poll that sees it
(resolution ~POLL_S). The same query reads the relay's cursors, so each lag is also
split into its stages: commit to sequenced, to published on JetStream, to applied.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg

from commands.accounts import Deposit, OpenAccount
from commands.bootstrap import handle
from commands.instruments import ListInstrument, instrument_stream_id
from commands.orders import FillOrder, PlaceOrder
from commands.runtime import CommandContext, Ledger
from commands.users import RegisterUser, user_stream_id
from ledger.domain import account
from ledger.domain.order import OrderAccepted, OrderType
from ledger.domain.side import Side
from ledger.domain.user import Role

POLL_S: Final = 0.005
SHOWN_MAX: Final = 100_000
IN_FLIGHT_MAX: Final = 256
CASH: Final = Decimal("1000000000")
PRICE: Final = Decimal("10.00")
PASSWORD_HASH: Final = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
WATCHED: Final = ("accounts", "orders")
CURSORS: Final = ("sequenced", "published")  # the relay's, in ledger.relay_state


@dataclass
class Market:
    """Funded accounts (each used by one command at a time: two commands on one account
    would only make each other retry), instruments, and each account's open orders."""

    accounts: list[UUID]
    instruments: list[UUID]
    idle: asyncio.Queue[UUID] = field(default_factory=asyncio.Queue)
    open_orders: dict[UUID, deque[UUID]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for account_id in self.accounts:
            self.idle.put_nowait(account_id)
            self.open_orders[account_id] = deque()


async def set_up(ledger: Ledger, accounts: int, instruments: int) -> Market:
    context = CommandContext(actor="bench")
    instrument_ids = []
    for _ in range(instruments):
        symbol = f"L{uuid4().hex[:10].upper()}"
        listing = ListInstrument(
            symbol=symbol,
            currency="USD",
            tick_size=Decimal("0.01"),
            lot_size=Decimal("1"),
            price_precision=2,
            quantity_precision=0,
        )
        await handle(ledger, listing, context)
        instrument_ids.append(instrument_stream_id(symbol))
    account_ids = []
    for _ in range(accounts):
        email = f"{uuid4().hex}@lag.example.com"
        registration = RegisterUser(
            email=email, display_name="Lag", role=Role.TRADER, password_hash=PASSWORD_HASH
        )
        await handle(ledger, registration, context)
        user_id = user_stream_id(email)
        await handle(ledger, OpenAccount(user_id=user_id, currency="USD"), context)
        account_id = account.account_stream_id(user_id, "USD")
        await handle(ledger, Deposit(account_id=account_id, amount=CASH), context)
        account_ids.append(account_id)
    return Market(account_ids, instrument_ids)


def next_command(market: Market, account_id: UUID, rng: random.Random) -> tuple[Any, str]:
    """The next command of the mix on the account, and the read model it is watched in:
    half deposits, 30% buy orders, 20% fills of the account's oldest open order."""
    roll, open_orders = rng.random(), market.open_orders[account_id]
    if roll < 0.5:
        amount = Decimal(rng.randint(1, 100_000)) / 100
        return Deposit(account_id=account_id, amount=amount), "accounts"
    if roll < 0.8 or not open_orders:
        place = PlaceOrder(
            order_id=uuid4(),
            account_id=account_id,
            instrument_id=rng.choice(market.instruments),
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=Decimal(1),
            limit_price=PRICE,
        )
        return place, "orders"
    order_id = open_orders.popleft()
    fill = FillOrder(order_id=order_id, fill_id=order_id.hex, quantity=Decimal(1), price=PRICE,
                     fee=Decimal(0), venue="LAG", executed_at=datetime.now(UTC))  # fmt: skip
    return fill, "orders"


class Watcher:
    """Polls the watched read models' checkpoints; resolves commands as they show."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.waiting: dict[str, dict[int, list[float]]] = {name: {} for name in WATCHED}
        # Positions applied with nobody waiting yet (a handler may return after that).
        self.shown: dict[str, OrderedDict[int, tuple[float, int]]] = {
            name: OrderedDict() for name in WATCHED
        }
        self.seen: dict[str, int] = {}
        self.lags_ms: list[float] = []
        self.recording = False
        # When the relay's sequenced and published cursors were first seen at or past a
        # value: (times, values) in polling order, for the stages of each lag.
        self.cursors: dict[str, tuple[list[float], list[int]]] = {
            name: ([], []) for name in CURSORS
        }
        self.stages_ms: dict[str, list[float]] = {name: [] for name in CURSORS}

    def expect(self, projection: str, position: int, committed: float) -> None:
        shown = self.shown[projection].pop(position, None)
        if shown is not None:  # Applied before its handler had even returned.
            self._record(shown[0], committed, shown[1])
        else:
            self.waiting[projection].setdefault(position, []).append(committed)

    def _record(self, shown: float, committed: float, sequence: int) -> None:
        if not self.recording:
            return
        self.lags_ms.append(max(shown - committed, 0.0) * 1000)
        for name, (times, values) in self.cursors.items():
            index = bisect.bisect_left(values, sequence)
            if index < len(values):
                self.stages_ms[name].append(max(times[index] - committed, 0.0) * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        async with self.pool.acquire() as connection:
            self.seen = await _checkpoints(connection)
            while not stop.is_set():
                await self._poll(connection)
                await asyncio.sleep(POLL_S)

    async def _poll(self, connection: asyncpg.Connection) -> None:
        checkpoints = await _checkpoints(connection)
        polled = time.perf_counter()
        for name in CURSORS:
            times, values = self.cursors[name]
            if not values or checkpoints[name] > values[-1]:
                times.append(polled)
                values.append(checkpoints[name])
        for name in WATCHED:
            checkpoint = checkpoints[name]
            if checkpoint <= self.seen[name]:
                continue
            positions = await connection.fetch(
                "SELECT position, sequence FROM ledger.sequence "
                "WHERE sequence > $1 AND sequence <= $2",
                self.seen[name],
                checkpoint,
            )
            now = time.perf_counter()
            self.seen[name] = checkpoint
            waiting, shown = self.waiting[name], self.shown[name]
            for position, sequence in positions:
                committed_all = waiting.pop(position, None)
                if committed_all is None:
                    shown[position] = (now, sequence)
                    if len(shown) > SHOWN_MAX:
                        shown.popitem(last=False)
                    continue
                for committed in committed_all:
                    self._record(now, committed, sequence)


async def _checkpoints(connection: asyncpg.Connection) -> dict[str, int]:
    """The watched projections' checkpoints and the relay's cursors, in one query."""
    rows = await connection.fetch(
        "SELECT projection, sequence FROM read.checkpoints WHERE projection = ANY($1::text[]) "
        "UNION ALL SELECT 'sequenced', sequenced FROM ledger.relay_state "
        "UNION ALL SELECT 'published', published FROM ledger.relay_state",
        list(WATCHED),
    )
    found = dict.fromkeys((*WATCHED, *CURSORS), 0)
    found.update({row[0]: int(row[1]) for row in rows})
    return found


@dataclass
class Load:
    """Counts of one run of the steady load."""

    started: int = 0
    failed: int = 0
    late_max_ms: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


async def steady(
    ledger: Ledger, market: Market, watcher: Watcher, rate: float, seconds: float, seed: int
) -> Load:
    """Commands at `rate` per second for `seconds`, each expected in its read model."""
    rng, load = random.Random(seed), Load()
    in_flight = asyncio.Semaphore(IN_FLIGHT_MAX)
    context = CommandContext(actor="lag")
    tasks: set[asyncio.Task[None]] = set()

    async def one(account_id: UUID, command: Any, projection: str) -> None:
        try:
            result = await handle(ledger, command, context)
            committed = time.perf_counter()
            token = result.consistency_token
            if token is not None:
                watcher.expect(projection, token.position, committed)
            if isinstance(command, PlaceOrder) and any(
                isinstance(item.event, OrderAccepted) for item in result.events
            ):
                market.open_orders[account_id].append(command.order_id)
        except Exception as error:  # A refused command is counted, not fatal.
            load.failed += 1
            if len(load.errors) < 5:
                load.errors.append(repr(error))
        finally:
            market.idle.put_nowait(account_id)
            in_flight.release()

    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        due = started + load.started / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        load.late_max_ms = max(load.late_max_ms, (time.perf_counter() - due) * 1000)
        await in_flight.acquire()
        account_id = await market.idle.get()
        command, projection = next_command(market, account_id, rng)
        task = asyncio.create_task(one(account_id, command, projection))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        load.started += 1
    await asyncio.gather(*tasks)
    load.seconds = elapsed
    return load
