"""Command handling throughput (place + fill) next to the bare store append of the same events.

Setup: instruments and one funded account per client. Then, round by round:

- handlers: `clients` concurrent clients, each looping place_order (a buy limit of 1 lot)
  then fill_order (filling it in full) on its own account, for a fixed time, through one
  Ledger as an API process would. A placement loads its streams (one query, merged with
  the loads of other commands in flight, see commands.reads), decides and appends (one
  statement); a fill is decided on the streams the placement cached and appended.
- bare append: the same clients append, through EventStore.append, exactly the events the
  handlers appended in the round before (the same payloads, the same grouping into one
  append per command, each stream expected at its head), into fresh streams of the same
  shape, with the same concurrency. No load and no decision: the floor for the handlers.

Counted: commands handled per second; events appended per second on both sides; the
ratio of the two events rates (handlers / bare). Medians over the rounds.

    python -m benchmarks.bench_commands [--rounds 5] [--seconds 3] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import uvloop

from benchmarks.common import database_server, median, report, scratch_database
from commands.accounts import Deposit, OpenAccount, deposit, open_account
from commands.bootstrap import bootstrap
from commands.instruments import ListInstrument, instrument_stream_id, list_instrument
from commands.orders import FillOrder, PlaceOrder, fill_order, place_order
from commands.runtime import CommandContext, Ledger
from commands.users import RegisterUser, register_user, user_stream_id
from ledger.domain import account
from ledger.domain.base import StreamEvent
from ledger.domain.order import OrderType
from ledger.domain.side import Side
from ledger.domain.user import Role
from ledger.store import NEW_STREAM, EventStore, NewEvent, StreamHead

INSTRUMENTS = 4
CASH = Decimal("1000000000")
PRICE = Decimal("10.00")
PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"


@dataclass
class Client:
    """One trading client: its account, its instrument, and what its commands appended."""

    account_id: UUID
    instrument_id: UUID
    context: CommandContext
    appended: list[list[StreamEvent]] = field(default_factory=list)


async def set_up(ledger: Ledger, clients: int) -> list[Client]:
    instrument_ids = []
    for _ in range(INSTRUMENTS):
        symbol = f"B{uuid4().hex[:10].upper()}"
        listing = ListInstrument(
            symbol=symbol,
            currency="USD",
            tick_size=Decimal("0.01"),
            lot_size=Decimal("1"),
            price_precision=2,
            quantity_precision=0,
        )
        await list_instrument(ledger, listing, CommandContext(actor="bench"))
        instrument_ids.append(instrument_stream_id(symbol))
    created = []
    for index in range(clients):
        account_id = await funded_account(ledger)
        context = CommandContext(actor=f"bench-{index}", correlation_id=uuid4())
        created.append(Client(account_id, instrument_ids[index % INSTRUMENTS], context))
    return created


async def funded_account(ledger: Ledger) -> UUID:
    email = f"{uuid4().hex}@bench.example.com"
    registration = RegisterUser(
        email=email, display_name="Bench", role=Role.TRADER, password_hash=PASSWORD_HASH
    )
    context = CommandContext(actor="bench")
    await register_user(ledger, registration, context)
    user_id = user_stream_id(email)
    await open_account(ledger, OpenAccount(user_id=user_id, currency="USD"), context)
    account_id = account.account_stream_id(user_id, "USD")
    await deposit(ledger, Deposit(account_id=account_id, amount=CASH), context)
    return account_id


async def trade_once(ledger: Ledger, client: Client) -> None:
    """One place + fill, recording what each command appended."""
    order_id = uuid4()
    buy = PlaceOrder(
        order_id=order_id,
        account_id=client.account_id,
        instrument_id=client.instrument_id,
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal(1),
        limit_price=PRICE,
    )
    placed = await place_order(ledger, buy, client.context)
    fill = FillOrder(
        order_id=order_id,
        fill_id=order_id.hex,
        quantity=Decimal(1),
        price=PRICE,
        fee=Decimal(0),
        venue="BENCH",
        executed_at=datetime.now(UTC),
    )
    filled = await fill_order(ledger, fill, client.context)
    assert len(placed.events) == 3, placed.events
    client.appended += [placed.events, filled.events]


async def handler_round(
    ledger: Ledger, clients: list[Client], seconds: float
) -> tuple[float, float]:
    """Commands/s and events/s through the handlers, all clients trading until the deadline."""
    for client in clients:
        client.appended = []
    deadline = time.perf_counter() + seconds

    async def loop(client: Client) -> None:
        while time.perf_counter() < deadline:
            await trade_once(ledger, client)

    started = time.perf_counter()
    await asyncio.gather(*(loop(client) for client in clients))
    elapsed = time.perf_counter() - started
    commands = sum(len(client.appended) for client in clients)
    events = sum(len(batch) for client in clients for batch in client.appended)
    return commands / elapsed, events / elapsed


async def seeded_stream(store: EventStore, like: UUID) -> tuple[UUID, StreamHead]:
    """A fresh stream with as many events as an account has before trading (open and
    deposit), so that its appends are checked against a head like the account's."""
    stream_id = uuid4()
    originals = await store.read_stream(like, up_to_version=2)
    events = [
        NewEvent(stream_id=stream_id, stream_type="account", topic=item.topic, data=item.data)
        for item in originals
    ]
    result = await store.append(events, {stream_id: NEW_STREAM}, actor="bench")
    return stream_id, result.head_of(stream_id)


async def bare_round(store: EventStore, clients: list[Client]) -> float:
    """Events/s appending what the handlers appended, without loading or deciding."""
    heads: list[dict[UUID, StreamHead]] = []
    renamed: list[dict[UUID, UUID]] = []
    for client in clients:
        account_copy, head = await seeded_stream(store, client.account_id)
        heads.append({account_copy: head})
        renamed.append({client.account_id: account_copy})

    async def replay(index: int) -> None:
        client, streams, tips = clients[index], renamed[index], heads[index]
        for batch in client.appended:
            events = [
                NewEvent(
                    stream_id=streams.setdefault(item.stream_id, uuid4()),
                    stream_type=item.stream_type,
                    topic=item.event.topic(),
                    data=item.event,
                    schema_version=item.event.schema_version,
                )
                for item in batch
            ]
            expected = {event.stream_id: tips.get(event.stream_id, NEW_STREAM) for event in events}
            result = await store.append(
                events,
                expected,
                actor=client.context.actor,
                correlation_id=client.context.correlation_id,
                causation_id=client.context.causation_id,
            )
            for stream_id in expected:
                tips[stream_id] = result.head_of(stream_id)

    started = time.perf_counter()
    await asyncio.gather(*(replay(index) for index in range(len(clients))))
    elapsed = time.perf_counter() - started
    return sum(len(batch) for client in clients for batch in client.appended) / elapsed


async def main(arguments: argparse.Namespace) -> None:
    with database_server() as server_url:
        async with scratch_database(server_url) as url:
            await measure(url, arguments)


async def measure(url: str, arguments: argparse.Namespace) -> None:
    clients_count, seconds = arguments.clients, arguments.seconds
    pool = await asyncpg.create_pool(url, min_size=clients_count, max_size=clients_count)
    try:
        ledger = bootstrap(pool)
        store = ledger.repository.store
        clients = await set_up(ledger, clients_count)
        print(
            f"commands benchmark: {clients_count} clients, {arguments.rounds} rounds of "
            f"{seconds}s; each client loops place_order + fill_order on its own account "
            "(no idempotency keys on either side)",
            flush=True,
        )
        # A warm-up of both paths (connections, prepared statements, caches); not counted.
        await handler_round(ledger, clients, arguments.warmup)
        await bare_round(store, clients)
        figures: dict[str, list[float]] = {"commands": [], "handled": [], "append": []}
        for _ in range(arguments.rounds):
            commands_rate, events_rate = await handler_round(ledger, clients, seconds)
            figures["commands"].append(commands_rate)
            figures["handled"].append(events_rate)
            figures["append"].append(await bare_round(store, clients))
    finally:
        await pool.close()
    print_figures(figures)


def print_figures(figures: dict[str, list[float]]) -> None:
    report("handlers: commands", figures["commands"], unit="commands/s")
    report("handlers: events appended", figures["handled"])
    report("bare append of the same events", figures["append"])
    per_command = median(figures["handled"]) / median(figures["commands"])
    print(f"  events per command: {per_command:.2f} (place 3; fill 4, or 5 with a new position)")
    handled, append = median(figures["handled"]), median(figures["append"])
    print("  ratio = handlers' events/s over the bare append's events/s, medians")
    print(
        f"commands: handled={median(figures['commands']):.0f} append={append:.0f} "
        f"ratio={handled / append:.2f}"
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=16)
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse_arguments()))
