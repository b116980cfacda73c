"""Handlers racing on the same streams against the real event store.

Each race uses RacingRepository: every party loads and decides on the same state and
only then do they all try to commit, from separate ledgers (as separate API processes
would, each with its own cache). So the conflict is certain, not a matter of timing,
and the tests check what the retries make of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from commands.accounts import Deposit, Withdraw, deposit, withdraw
from commands.bootstrap import bootstrap
from commands.orders import CancelOrder, cancel_order, fill_order, place_order
from commands.runtime import CommandContext, CommandResult, Ledger, Loaded, Repository
from commands.users import RegisterUser, register_user, user_stream_id
from ledger.domain import account, position
from ledger.domain.base import decode_event
from ledger.domain.errors import EmailTakenError, InvalidStateTransitionError, OverfillError
from ledger.domain.side import Side
from ledger.domain.user import Role
from ledger.errors import ConcurrencyError
from ledger.store import AppendResult, EventStore
from tests.integration.test_commands_helpers import (
    conflicts,
    context,
    d,
    fill_of,
    folded,
    limit_order,
    names,
    new_account,
    new_instrument,
    racing_ledgers,
    stored,
)
from tests.unit.support import PASSWORD_HASH


@pytest.fixture
def ledger(pool: asyncpg.Pool) -> Ledger:
    return bootstrap(pool)


async def open_buy(ledger: Ledger, quantity: str, cash: str = "100000") -> tuple[UUID, UUID, UUID]:
    """An accepted buy limit order at 10.00: (order id, account id, instrument id)."""
    account_id = await new_account(ledger, cash=cash)
    instrument_id = await new_instrument(ledger)
    buy = limit_order(Side.BUY, account_id, instrument_id, quantity, "10.00")
    assert names(await place_order(ledger, buy, context())) == [
        "OrderPlaced",
        "OrderAccepted",
        "CashReserved",
    ]
    return buy.order_id, account_id, instrument_id


async def test_two_concurrent_fills_on_one_order_are_both_applied(
    ledger: Ledger, pool: asyncpg.Pool, store: EventStore
) -> None:
    order_id, account_id, instrument_id = await open_buy(ledger, "10")
    replicas = racing_ledgers(pool, parties=2, replicas=2)
    fills = [fill_of(order_id, "4", "9.90", fill_id="F1"), fill_of(order_id, "6", "10.00")]
    results = await asyncio.gather(
        *(
            fill_order(replica, fill, context())
            for replica, fill in zip(replicas, fills, strict=True)
        )
    )
    assert conflicts(replicas) >= 1
    assert all(result.events for result in results)
    order = await folded(store, order_id)
    assert (order.filled_quantity, set(order.fill_ids)) == (d("10"), {"F1", fills[1].fill_id})
    held = await folded(store, position.position_stream_id(account_id, instrument_id))
    assert (held.quantity, held.trade_count, held.cost_basis) == (d("10"), 2, d("99.60"))
    cash = await folded(store, account_id)
    assert (cash.available, cash.reserved, cash.holds) == (d("99900.40"), d("0"), ())


async def test_the_same_fill_reported_twice_at_once_is_applied_once(
    ledger: Ledger, pool: asyncpg.Pool, store: EventStore
) -> None:
    order_id, account_id, instrument_id = await open_buy(ledger, "10")
    replicas = racing_ledgers(pool, parties=2, replicas=2)
    fill = fill_of(order_id, "4", "10.00", fill_id="SAME")
    results = await asyncio.gather(*(fill_order(replica, fill, context()) for replica in replicas))
    assert conflicts(replicas) == 1
    assert sorted(len(result.events) for result in results) == [0, 4]
    assert CommandResult([], None) in results
    held = await folded(store, position.position_stream_id(account_id, instrument_id))
    assert (held.quantity, held.trade_count) == (d("4"), 1)
    assert (await folded(store, order_id)).fill_ids == ("SAME",)


async def test_concurrent_fills_never_exceed_the_order_quantity(
    ledger: Ledger, pool: asyncpg.Pool, store: EventStore
) -> None:
    order_id, account_id, instrument_id = await open_buy(ledger, "10")
    replicas = racing_ledgers(pool, parties=5, replicas=5)
    outcomes = await asyncio.gather(
        *(fill_order(replica, fill_of(order_id, "3", "10.00"), context()) for replica in replicas),
        return_exceptions=True,
    )
    applied = [outcome for outcome in outcomes if isinstance(outcome, CommandResult)]
    refused = [outcome for outcome in outcomes if not isinstance(outcome, CommandResult)]
    assert (len(applied), len(refused)) == (3, 2)
    assert all(isinstance(error, OverfillError) for error in refused)
    order = await folded(store, order_id)
    assert order.filled_quantity == d("9")
    held = await folded(store, position.position_stream_id(account_id, instrument_id))
    assert (
        held.quantity
        == order.filled_quantity
        == sum_of_trades(
            await stored(store, position.position_stream_id(account_id, instrument_id))
        )
    )


def sum_of_trades(recorded: Sequence[Any]) -> Decimal:
    events = [decode_event(item.topic, item.data) for item in recorded]
    return sum((event.quantity for event in events if type(event) is position.TradeBooked), d("0"))


async def test_concurrent_buys_draining_one_account_never_overdraw_it(
    ledger: Ledger, pool: asyncpg.Pool, store: EventStore
) -> None:
    account_id = await new_account(ledger, cash="350")
    instrument_id = await new_instrument(ledger)
    replicas = racing_ledgers(pool, parties=6, replicas=3)
    orders = [limit_order(Side.BUY, account_id, instrument_id, "1", "100") for _ in range(6)]
    results = await asyncio.gather(
        *(
            place_order(replicas[index % 3], command, context())
            for index, command in enumerate(orders)
        )
    )
    assert conflicts(replicas) >= 1
    outcomes = sorted(names(result)[-1] for result in results)
    assert outcomes == ["CashReserved"] * 3 + ["OrderRejected"] * 3
    for result in results:
        if names(result)[-1] == "OrderRejected":
            assert result.events[-1].event.reason_code == "INSUFFICIENT_FUNDS"  # type: ignore[attr-defined]
    cash = await folded(store, account_id)
    assert (cash.available, cash.reserved, len(cash.holds)) == (d("50"), d("300"), 3)
    await assert_available_never_negative(store, account_id)


async def assert_available_never_negative(store: EventStore, account_id: UUID) -> None:
    state = None
    for recorded in await stored(store, account_id):
        state = account.evolve(state, decode_event(recorded.topic, recorded.data))
        assert state.available >= 0
        assert state.reserved >= 0


async def test_concurrent_deposits_are_all_counted(
    ledger: Ledger, pool: asyncpg.Pool, store: EventStore
) -> None:
    account_id = await new_account(ledger)
    replicas = racing_ledgers(pool, parties=8, replicas=2)
    command = Deposit(account_id=account_id, amount=d("12.34"))
    await asyncio.gather(*(deposit(replicas[index % 2], command, context()) for index in range(8)))
    assert conflicts(replicas) >= 1
    assert (await folded(store, account_id)).available == d("98.72")


async def test_concurrent_registrations_of_one_email_let_one_in(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    email = f"{uuid4().hex}@example.com"
    replicas = racing_ledgers(pool, parties=4, replicas=4)
    outcomes = await asyncio.gather(
        *(
            register_user(
                replica,
                RegisterUser(
                    email=email,
                    display_name=f"Racer {index}",
                    role=Role.TRADER,
                    password_hash=PASSWORD_HASH,
                ),
                context(),
            )
            for index, replica in enumerate(replicas)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(outcome, CommandResult) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, EmailTakenError) for outcome in outcomes) == 3
    assert len(await stored(store, user_stream_id(email))) == 1


class InterferingRepository(Repository):
    """A real repository that lets another writer deposit into the account between each
    load and save, the first `times` times: a conflict on every such attempt."""

    def __init__(self, store: EventStore, other: Ledger, account_id: UUID, times: int) -> None:
        super().__init__(store)
        self.other, self.account_id, self.times = other, account_id, times
        self.attempts = 0

    async def save(
        self, events: Sequence[Any], loaded: Mapping[UUID, Loaded], context: CommandContext
    ) -> AppendResult:
        self.attempts += 1
        if self.attempts <= self.times:
            command = Deposit(account_id=self.account_id, amount=d("1"))
            await deposit(self.other, command, CommandContext(actor="interferer"))
        return await super().save(events, loaded, context)


async def test_a_conflict_is_retried_on_fresh_state(
    ledger: Ledger, pool: asyncpg.Pool, store: EventStore
) -> None:
    account_id = await new_account(ledger, cash="10")
    repository = InterferingRepository(store, bootstrap(pool), account_id, times=2)
    racing = Ledger(repository, attempts_max=3)
    result = await withdraw(racing, Withdraw(account_id=account_id, amount=d("5")), context())
    assert repository.attempts == 3
    # Decided on the state after both interfering deposits: versions 1-2 (open, deposit),
    # 3-4 the interferer's, 5 the withdrawal.
    assert result.append is not None
    assert [event.version for event in result.append.events] == [5]
    assert (await folded(store, account_id)).available == d("7")


async def test_a_conflict_after_the_last_attempt_propagates_and_writes_nothing(
    ledger: Ledger, pool: asyncpg.Pool, store: EventStore
) -> None:
    account_id = await new_account(ledger, cash="10")
    repository = InterferingRepository(store, bootstrap(pool), account_id, times=3)
    racing = Ledger(repository, attempts_max=3)
    with pytest.raises(ConcurrencyError) as raised:
        await withdraw(racing, Withdraw(account_id=account_id, amount=d("5")), context())
    assert raised.value.stream_id == account_id
    assert repository.attempts == 3
    recorded = await stored(store, account_id)
    assert [item.actor for item in recorded[-3:]] == ["interferer"] * 3
    assert (await folded(store, account_id)).available == d("13")


# Fills are first decided on cached states (no query): a stale cache must never show.


class CountingRepository(Repository):
    """A real repository that counts its loads and the conflicts its saves met."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store)
        self.loads = 0
        self.conflicts = 0

    async def load(self, wanted: Mapping[UUID, str]) -> dict[UUID, Loaded]:
        self.loads += 1
        return await super().load(wanted)

    async def save(
        self, events: Sequence[Any], loaded: Mapping[UUID, Loaded], context: CommandContext
    ) -> AppendResult:
        try:
            return await super().save(events, loaded, context)
        except ConcurrencyError:
            self.conflicts += 1
            raise


async def test_a_fill_on_cached_streams_needs_no_query(store: EventStore) -> None:
    repository = CountingRepository(store)
    counted = Ledger(repository)
    order_id, _, _ = await open_buy(counted, "10")
    await fill_order(counted, fill_of(order_id, "2", "10.00"), context())  # Caches the position.
    loads = repository.loads
    await fill_order(counted, fill_of(order_id, "3", "10.00"), context())
    assert repository.loads == loads
    assert (await folded(store, order_id)).filled_quantity == d("5")


async def test_a_fill_decided_on_a_stale_cache_is_decided_again_on_the_log(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    repository = CountingRepository(store)
    counted = Ledger(repository)
    order_id, _, _ = await open_buy(counted, "10")
    await fill_order(counted, fill_of(order_id, "2", "10.00"), context())
    # Another replica fills next: `counted`'s cached order and account are now stale.
    await fill_order(bootstrap(pool), fill_of(order_id, "6", "10.00"), context())
    with pytest.raises(OverfillError):
        await fill_order(counted, fill_of(order_id, "3", "10.00"), context())
    assert repository.conflicts == 1
    applied = await fill_order(counted, fill_of(order_id, "2", "10.00"), context())
    assert names(applied)[0] == "OrderFilled"
    assert (await folded(store, order_id)).filled_quantity == d("10")


async def test_a_refusal_on_a_stale_cache_is_not_the_answer(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    repository = CountingRepository(store)
    counted = Ledger(repository)
    # The hold covers 10 x 10.00 exactly; a 1.00 fee beyond it needs available cash, which
    # only another replica's deposit provides: `counted`'s cached account has none.
    order_id, account_id, _ = await open_buy(counted, "10", cash="100")
    await fill_order(counted, fill_of(order_id, "5", "10.00"), context())
    await deposit(bootstrap(pool), Deposit(account_id=account_id, amount=d("5")), context())
    loads = repository.loads
    result = await fill_order(counted, fill_of(order_id, "5", "10.00", fee="1"), context())
    assert repository.loads == loads + 1  # Refused on the cache, decided again on the log.
    assert repository.conflicts == 0
    assert names(result) == ["OrderFilled", "TradeSettled", "TradeBooked", "HoldReleased"]
    assert (await folded(store, account_id)).available == d("4")


async def test_cached_streams_of_different_moments_are_decided_again_on_the_log(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    repository = CountingRepository(store)
    counted = Ledger(repository)
    order_id, account_id, _ = await open_buy(counted, "10")
    await fill_order(counted, fill_of(order_id, "2", "10.00"), context())
    await cancel_order(bootstrap(pool), CancelOrder(order_id=order_id), context())
    # A deposit reloads the account (its hold released), not the order (still open here).
    await deposit(counted, Deposit(account_id=account_id, amount=d("1")), context())
    with pytest.raises(InvalidStateTransitionError):
        await fill_order(counted, fill_of(order_id, "2", "10.00"), context())
    assert (await folded(store, order_id)).filled_quantity == d("2")
