"""Command handlers against the real event store: every handler's events, the metadata
on them, replay determinism, idempotency, and rejections that write nothing."""

from __future__ import annotations

from uuid import UUID, uuid4

import asyncpg
import pytest

from commands.accounts import (
    ChargeFee,
    Deposit,
    OpenAccount,
    Withdraw,
    charge_fee,
    deposit,
    open_account,
    withdraw,
)
from commands.bootstrap import bootstrap, handle
from commands.instruments import (
    DelistInstrument,
    HaltInstrument,
    ListInstrument,
    ResumeInstrument,
    delist_instrument,
    halt_instrument,
    instrument_stream_id,
    list_instrument,
    resume_instrument,
)
from commands.orders import (
    CancelOrder,
    ExpireOrder,
    PlaceOrder,
    RejectOrder,
    cancel_order,
    expire_order,
    fill_order,
    place_order,
    reject_order,
)
from commands.runtime import CommandResult, Ledger
from commands.signals import EmitSignal, emit_signal
from commands.strategies import (
    ActivateStrategy,
    ChangeStrategyParameters,
    CreateStrategy,
    DeactivateStrategy,
    activate_strategy,
    change_strategy_parameters,
    create_strategy,
    deactivate_strategy,
)
from commands.users import (
    ChangePassword,
    ChangeRole,
    DisableUser,
    RegisterUser,
    change_password,
    change_role,
    disable_user,
    register_user,
    user_stream_id,
)
from ledger.domain import account, position
from ledger.domain.errors import (
    AlreadyExistsError,
    EmailTakenError,
    InstrumentNotTradableError,
    InsufficientFundsError,
    InvalidStateTransitionError,
    StrategyInactiveError,
    SymbolTakenError,
    UserDisabledError,
    UserNotFoundError,
)
from ledger.domain.order import OrderStatus, OrderType
from ledger.domain.side import Side
from ledger.domain.signal import SignalAction
from ledger.domain.user import Role
from ledger.errors import IdempotencyConflictError
from ledger.store import EventStore
from tests.integration.test_commands_helpers import (
    context,
    count_events,
    d,
    encoded,
    fill_of,
    folded,
    limit_order,
    names,
    new_account,
    new_instrument,
    new_symbol,
    new_user,
    stored,
)
from tests.unit.support import OTHER_PASSWORD_HASH, PASSWORD_HASH


@pytest.fixture
def ledger(pool: asyncpg.Pool) -> Ledger:
    return bootstrap(pool)


def state_of(ledger: Ledger, stream_id: UUID) -> object:
    cached = ledger.repository.cache.get(stream_id)
    assert cached is not None
    return cached.state


# Users ----------------------------------------------------------------------


async def test_register_user_records_the_user_on_the_emails_stream(
    ledger: Ledger, store: EventStore
) -> None:
    email = f"{uuid4().hex}@Example.com"
    command = RegisterUser(
        email=f"  {email} ", display_name="Ada", role=Role.TRADER, password_hash=PASSWORD_HASH
    )
    result = await register_user(ledger, command, context())
    user_id = user_stream_id(email)
    assert names(result) == ["UserRegistered"]
    assert result.events[0].stream_id == user_id
    assert result.events[0].event.email == email.lower()  # type: ignore[attr-defined]
    assert [event.version for event in await stored(store, user_id)] == [1]


async def test_a_second_registration_of_an_email_is_refused_and_writes_nothing(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    email = f"{uuid4().hex}@example.com"
    first = RegisterUser(
        email=email, display_name="A", role=Role.TRADER, password_hash=PASSWORD_HASH
    )
    await register_user(ledger, first, context())
    before = await count_events(pool)
    again = RegisterUser(
        email=email.upper(), display_name="B", role=Role.ADMIN, password_hash=PASSWORD_HASH
    )
    with pytest.raises(EmailTakenError) as raised:
        await register_user(bootstrap(pool), again, context())
    assert raised.value.code == "EMAIL_TAKEN"
    assert await count_events(pool) == before


async def test_user_lifecycle_password_role_disable(ledger: Ledger, store: EventStore) -> None:
    user_id = await new_user(ledger)
    changed = await change_password(
        ledger, ChangePassword(user_id=user_id, password_hash=OTHER_PASSWORD_HASH), context()
    )
    assert names(changed) == ["PasswordChanged"]
    promoted = await change_role(ledger, ChangeRole(user_id=user_id, role=Role.ADMIN), context())
    assert names(promoted) == ["RoleChanged"]
    same = await change_role(ledger, ChangeRole(user_id=user_id, role=Role.ADMIN), context())
    assert same == CommandResult([], None)
    disabled = await disable_user(ledger, DisableUser(user_id=user_id, reason="left"), context())
    assert names(disabled) == ["UserDisabled"]
    with pytest.raises(UserDisabledError):
        await change_role(ledger, ChangeRole(user_id=user_id, role=Role.TRADER), context())
    user_state = await folded(store, user_id)
    assert (user_state.token_version, user_state.disabled, user_state.role) == (4, True, Role.ADMIN)


# Accounts -------------------------------------------------------------------


async def test_account_open_deposit_withdraw_fee(ledger: Ledger, store: EventStore) -> None:
    user_id = await new_user(ledger)
    opened = await open_account(ledger, OpenAccount(user_id=user_id, currency="USD"), context())
    account_id = account.account_stream_id(user_id, "USD")
    assert names(opened) == ["AccountOpened"]
    assert opened.events[0].stream_id == account_id
    deposited = await deposit(ledger, Deposit(account_id=account_id, amount=d("100")), context())
    withdrawn = await withdraw(
        ledger, Withdraw(account_id=account_id, amount=d("30.5"), reference="W1"), context()
    )
    charged = await charge_fee(
        ledger, ChargeFee(account_id=account_id, amount=d("0.25"), reason="monthly"), context()
    )
    assert [names(deposited), names(withdrawn), names(charged)] == [
        ["CashDeposited"],
        ["CashWithdrawn"],
        ["FeeCharged"],
    ]
    state = await folded(store, account_id)
    assert state.available == d("69.25")
    assert encoded(state) == encoded(state_of(ledger, account_id))


async def test_account_refusals_write_nothing(
    ledger: Ledger, store: EventStore, pool: asyncpg.Pool
) -> None:
    account_id = await new_account(ledger, cash="10")
    user_id = (await folded(store, account_id)).user_id
    before = await count_events(pool)
    with pytest.raises(InsufficientFundsError):
        await withdraw(ledger, Withdraw(account_id=account_id, amount=d("10.01")), context())
    with pytest.raises(AlreadyExistsError):
        await open_account(ledger, OpenAccount(user_id=user_id, currency="USD"), context())
    with pytest.raises(UserNotFoundError):
        await open_account(ledger, OpenAccount(user_id=uuid4(), currency="USD"), context())
    assert await count_events(pool) == before


# Instruments, strategies, signals --------------------------------------------


async def test_instrument_lifecycle(ledger: Ledger, pool: asyncpg.Pool) -> None:
    symbol = new_symbol()
    listing = ListInstrument(
        symbol=symbol.lower(),
        currency="USD",
        tick_size=d("0.05"),
        lot_size=d("10"),
        price_precision=2,
        quantity_precision=0,
    )
    listed = await list_instrument(ledger, listing, context())
    instrument_id = instrument_stream_id(symbol)
    assert names(listed) == ["InstrumentListed"]
    assert listed.events[0].stream_id == instrument_id
    with pytest.raises(SymbolTakenError):
        await list_instrument(ledger, listing, context())
    halted = await halt_instrument(ledger, HaltInstrument(instrument_id=instrument_id), context())
    resumed = await resume_instrument(
        ledger, ResumeInstrument(instrument_id=instrument_id), context()
    )
    with pytest.raises(InvalidStateTransitionError):
        await resume_instrument(ledger, ResumeInstrument(instrument_id=instrument_id), context())
    delisted = await delist_instrument(
        ledger, DelistInstrument(instrument_id=instrument_id, reason="merger"), context()
    )
    assert [names(halted), names(resumed), names(delisted)] == [
        ["InstrumentHalted"],
        ["InstrumentResumed"],
        ["InstrumentDelisted"],
    ]


async def test_strategy_lifecycle_and_signals(ledger: Ledger, store: EventStore) -> None:
    instrument_id = await new_instrument(ledger)
    strategy_id, owner = uuid4(), await new_user(ledger)
    created = await create_strategy(
        ledger,
        CreateStrategy(strategy_id=strategy_id, name="Momentum", owner_id=owner),
        context(),
    )
    signal = EmitSignal(
        signal_id=uuid4(),
        strategy_id=strategy_id,
        instrument_id=instrument_id,
        action=SignalAction.BUY,
        strength=d("0.75"),
        reasons=("breakout",),
        indicators={"rsi": d("71.5")},
    )
    with pytest.raises(StrategyInactiveError):
        await emit_signal(ledger, signal, context())
    parameters = {"window": 20, "threshold": "1.5"}
    changed = await change_strategy_parameters(
        ledger, ChangeStrategyParameters(strategy_id=strategy_id, parameters=parameters), context()
    )
    unchanged = await change_strategy_parameters(
        ledger, ChangeStrategyParameters(strategy_id=strategy_id, parameters=parameters), context()
    )
    activated = await activate_strategy(
        ledger, ActivateStrategy(strategy_id=strategy_id), context()
    )
    emitted = await emit_signal(ledger, signal, context())
    deactivated = await deactivate_strategy(
        ledger, DeactivateStrategy(strategy_id=strategy_id), context()
    )
    assert [names(created), names(changed), names(unchanged)] == [
        ["StrategyCreated"],
        ["StrategyParametersChanged"],
        [],
    ]
    assert [names(activated), names(emitted), names(deactivated)] == [
        ["StrategyActivated"],
        ["SignalEmitted"],
        ["StrategyDeactivated"],
    ]
    assert (await folded(store, signal.signal_id)).strength == d("0.75")
    with pytest.raises(AlreadyExistsError):
        await emit_signal(ledger, signal, context())


# Orders ---------------------------------------------------------------------


async def test_buy_placed_filled_in_two_parts(ledger: Ledger, store: EventStore) -> None:
    account_id = await new_account(ledger, cash="1000")
    instrument_id = await new_instrument(ledger)
    buy = limit_order(Side.BUY, account_id, instrument_id, "10", "20.00")
    placed = await place_order(ledger, buy, context())
    assert names(placed) == ["OrderPlaced", "OrderAccepted", "CashReserved"]
    first = await fill_order(ledger, fill_of(buy.order_id, "4", "19.50", fee="0.10"), context())
    assert names(first) == ["OrderPartiallyFilled", "TradeSettled", "PositionOpened", "TradeBooked"]
    second = await fill_order(ledger, fill_of(buy.order_id, "6", "20.00"), context())
    assert names(second) == ["OrderFilled", "TradeSettled", "TradeBooked", "HoldReleased"]
    position_id = position.position_stream_id(account_id, instrument_id)
    held = await folded(store, position_id)
    assert (held.quantity, held.cost_basis) == (d("10"), d("198.00"))
    cash = await folded(store, account_id)
    assert (cash.available, cash.reserved, cash.holds) == (d("801.90"), d("0"), ())


async def test_a_fill_id_seen_before_appends_nothing(ledger: Ledger, store: EventStore) -> None:
    account_id = await new_account(ledger, cash="1000")
    instrument_id = await new_instrument(ledger)
    buy = limit_order(Side.BUY, account_id, instrument_id, "10", "20")
    await place_order(ledger, buy, context())
    fill = fill_of(buy.order_id, "4", "20", fill_id="F-1")
    await fill_order(ledger, fill, context())
    versions = len(await stored(store, buy.order_id))
    # A redelivered execution report, seen by another replica with an empty cache.
    again = await fill_order(bootstrap(store.pool), fill, context())
    assert again == CommandResult([], None)
    assert len(await stored(store, buy.order_id)) == versions


async def test_sell_with_signal_then_cancel_releases_the_reservation(
    ledger: Ledger, store: EventStore
) -> None:
    account_id = await new_account(ledger, cash="1000")
    instrument_id = await new_instrument(ledger)
    buy = limit_order(Side.BUY, account_id, instrument_id, "5", "10")
    await place_order(ledger, buy, context())
    await fill_order(ledger, fill_of(buy.order_id, "5", "10"), context())
    strategy_id = uuid4()
    await create_strategy(
        ledger, CreateStrategy(strategy_id=strategy_id, name="S", owner_id=uuid4()), context()
    )
    await activate_strategy(ledger, ActivateStrategy(strategy_id=strategy_id), context())
    signal = EmitSignal(
        signal_id=uuid4(),
        strategy_id=strategy_id,
        instrument_id=instrument_id,
        action=SignalAction.SELL,
        strength=d("1"),
    )
    await emit_signal(ledger, signal, context())
    sell = limit_order(Side.SELL, account_id, instrument_id, "3", "12", signal_id=signal.signal_id)
    placed = await place_order(ledger, sell, context())
    assert names(placed) == ["OrderPlaced", "OrderAccepted", "SellQuantityReserved"]
    cancelled = await cancel_order(
        ledger, CancelOrder(order_id=sell.order_id, reason="changed my mind"), context()
    )
    assert names(cancelled) == ["OrderCancelled", "SellQuantityReleased"]
    position_id = position.position_stream_id(account_id, instrument_id)
    assert (await folded(store, position_id)).reservations == ()


async def test_expire_and_venue_reject_release_the_hold(ledger: Ledger, store: EventStore) -> None:
    account_id = await new_account(ledger, cash="1000")
    instrument_id = await new_instrument(ledger)
    day = limit_order(Side.BUY, account_id, instrument_id, "10", "20")
    await place_order(ledger, day, context())
    await fill_order(ledger, fill_of(day.order_id, "3", "20"), context())
    expired = await expire_order(ledger, ExpireOrder(order_id=day.order_id), context())
    assert names(expired) == ["OrderExpired", "HoldReleased"]
    refused = limit_order(Side.BUY, account_id, instrument_id, "1", "20")
    await place_order(ledger, refused, context())
    rejected = await reject_order(
        ledger, RejectOrder(order_id=refused.order_id, reason="venue closed"), context()
    )
    assert names(rejected) == ["OrderRejected", "HoldReleased"]
    assert (await folded(store, refused.order_id)).reason_code == "VENUE_REJECTED"
    cash = await folded(store, account_id)
    assert (cash.available, cash.reserved) == (d("940.00"), d("0"))


async def test_a_failed_risk_check_is_recorded_as_a_rejection(
    ledger: Ledger, store: EventStore
) -> None:
    account_id = await new_account(ledger, cash="100")
    instrument_id = await new_instrument(ledger)
    too_big = limit_order(Side.BUY, account_id, instrument_id, "10", "10.01")
    result = await place_order(ledger, too_big, context())
    assert names(result) == ["OrderPlaced", "OrderRejected"]
    state = await folded(store, too_big.order_id)
    assert (state.status, state.reason_code) == (OrderStatus.REJECTED, "INSUFFICIENT_FUNDS")
    assert (await folded(store, account_id)).available == d("100")
    await halt_instrument(ledger, HaltInstrument(instrument_id=instrument_id), context())
    halted = await place_order(
        ledger, limit_order(Side.BUY, account_id, instrument_id, "1", "1"), context()
    )
    assert names(halted) == ["OrderPlaced", "OrderRejected"]
    assert halted.events[1].event.reason_code == InstrumentNotTradableError.code  # type: ignore[attr-defined]


async def test_market_buy_is_held_at_the_collar_above_the_reference_price(
    ledger: Ledger, store: EventStore
) -> None:
    account_id = await new_account(ledger, cash="1000")
    instrument_id = await new_instrument(ledger)
    market = PlaceOrder(
        order_id=uuid4(),
        account_id=account_id,
        instrument_id=instrument_id,
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=d("10"),
        reference_price=d("50"),
    )
    result = await handle(ledger, market, context())
    assert names(result) == ["OrderPlaced", "OrderAccepted", "CashReserved"]
    state = await folded(store, market.order_id)
    assert (state.hold_price, state.hold_amount) == (d("52.50"), d("525.00"))


# Metadata, replay, idempotency ------------------------------------------------


async def test_every_event_carries_the_context(ledger: Ledger, store: EventStore) -> None:
    account_id = await new_account(ledger, cash="1000")
    instrument_id = await new_instrument(ledger)
    buy = limit_order(Side.BUY, account_id, instrument_id, "2", "5")
    given = context(actor="user:ada", idempotency_key=f"key-{uuid4()}")
    await place_order(ledger, buy, given)
    fill_context = context(actor="venue:xnas", idempotency_key=f"key-{uuid4()}")
    await fill_order(ledger, fill_of(buy.order_id, "2", "5"), fill_context)
    position_id = position.position_stream_id(account_id, instrument_id)
    recorded = [
        event
        for stream_id in (buy.order_id, account_id, position_id)
        for event in await stored(store, stream_id)
        if event.idempotency_key in (given.idempotency_key, fill_context.idempotency_key)
    ]
    assert len(recorded) == 3 + 5
    for event in recorded:
        expected = given if event.idempotency_key == given.idempotency_key else fill_context
        assert event.actor == expected.actor
        assert event.correlation_id == expected.correlation_id
        assert event.causation_id == expected.causation_id


async def test_state_folded_from_the_log_equals_the_state_the_handlers_saw(
    ledger: Ledger, store: EventStore, pool: asyncpg.Pool
) -> None:
    account_id = await new_account(ledger, cash="5000", fee_rate=d("0.001"))
    instrument_id = await new_instrument(ledger, lot_size="5")
    touched = {account_id, instrument_id}
    for quantity, price in (("10", "20.00"), ("25", "19.95"), ("5", "21.10")):
        buy = limit_order(Side.BUY, account_id, instrument_id, quantity, price)
        await place_order(ledger, buy, context())
        await fill_order(ledger, fill_of(buy.order_id, "5", price, fee="0.02"), context())
        touched.add(buy.order_id)
    sell = limit_order(Side.SELL, account_id, instrument_id, "10", "19.00")
    await place_order(ledger, sell, context())
    await fill_order(ledger, fill_of(sell.order_id, "5", "19.50", fee="0.01"), context())
    await cancel_order(ledger, CancelOrder(order_id=sell.order_id), context())
    touched |= {sell.order_id, position.position_stream_id(account_id, instrument_id)}
    fresh = bootstrap(pool)  # Another replica: an empty cache, everything read from the log.
    for stream_id in touched:
        from_log = await folded(store, stream_id)
        assert encoded(from_log) == encoded(state_of(ledger, stream_id)), stream_id
        kind = (await stored(store, stream_id))[0].stream_type
        reloaded = await fresh.repository.load({stream_id: kind})
        assert encoded(reloaded[stream_id].state) == encoded(from_log)


async def test_a_retried_command_returns_the_first_result(
    ledger: Ledger, store: EventStore, pool: asyncpg.Pool
) -> None:
    account_id = await new_account(ledger, cash="100")
    instrument_id = await new_instrument(ledger)
    key = f"deposit-{uuid4()}"
    command = Deposit(account_id=account_id, amount=d("5"))
    first = await deposit(ledger, command, context(idempotency_key=key))
    again = await deposit(bootstrap(pool), command, context(idempotency_key=key))
    assert not first.replayed
    assert again.replayed
    assert again.consistency_token == first.consistency_token
    assert encoded(again.events) == encoded(first.events)
    assert (await folded(store, account_id)).available == d("105")
    # A retry whose decision is now refused (the order exists) or empty (the fill id is
    # known) still gets the first result.
    buy = limit_order(Side.BUY, account_id, instrument_id, "1", "5")
    placed = await place_order(ledger, buy, context(idempotency_key=f"place-{buy.order_id}"))
    replaced = await place_order(ledger, buy, context(idempotency_key=f"place-{buy.order_id}"))
    assert replaced.replayed
    assert encoded(replaced.events) == encoded(placed.events)
    fill = fill_of(buy.order_id, "1", "5")
    filled = await fill_order(ledger, fill, context(idempotency_key=f"fill-{fill.fill_id}"))
    refilled = await fill_order(ledger, fill, context(idempotency_key=f"fill-{fill.fill_id}"))
    assert refilled.replayed
    assert encoded(refilled.events) == encoded(filled.events)
    assert refilled.consistency_token == filled.consistency_token


async def test_a_key_reused_for_another_command_is_refused(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    account_id = await new_account(ledger, cash="100")
    key = f"reused-{uuid4()}"
    await deposit(
        ledger, Deposit(account_id=account_id, amount=d("5")), context(idempotency_key=key)
    )
    before = await count_events(pool)
    with pytest.raises(IdempotencyConflictError):
        await deposit(
            ledger, Deposit(account_id=account_id, amount=d("6")), context(idempotency_key=key)
        )
    assert await count_events(pool) == before
