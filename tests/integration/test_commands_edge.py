"""Commands refused at the edge (decoding) and by the decisions (instrument grids,
currency precision, streams of the wrong kind), each with its stable code, and
nothing written for any of them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import uuid4

import asyncpg
import msgspec
import pytest

from commands.accounts import Deposit, OpenAccount, deposit
from commands.bootstrap import HANDLERS, bootstrap
from commands.edge import COMMAND_BYTES_MAX, InvalidCommandError, parse
from commands.orders import FillOrder, PlaceOrder, fill_order, place_order
from commands.runtime import Ledger, WrongStreamTypeError
from commands.signals import EmitSignal
from commands.strategies import CreateStrategy
from ledger.domain.errors import (
    DomainError,
    InvalidAmountError,
    InvalidSignalError,
    LotSizeViolationError,
    OrderNotFoundError,
    PrecisionExceededError,
    TickSizeViolationError,
)
from ledger.domain.order import OrderType
from ledger.domain.side import Side
from tests.integration.test_commands_helpers import (
    context,
    count_events,
    d,
    fill_of,
    limit_order,
    new_account,
    new_instrument,
)


@pytest.fixture
def ledger(pool: asyncpg.Pool) -> Ledger:
    return bootstrap(pool)


def order_message(**changes: Any) -> bytes:
    message: dict[str, Any] = {
        "order_id": str(uuid4()),
        "account_id": str(uuid4()),
        "instrument_id": str(uuid4()),
        "side": "buy",
        "order_type": "limit",
        "quantity": "10",
        "limit_price": "20.05",
    }
    message.update(changes)
    return msgspec.json.encode({key: value for key, value in message.items() if value is not None})


def test_a_well_formed_message_decodes_with_exact_decimals() -> None:
    command = parse(PlaceOrder, order_message(quantity=0.1, limit_price="20.05"))
    assert (command.quantity, command.limit_price) == (Decimal("0.1"), Decimal("20.05"))
    assert command.side is Side.BUY
    assert command.order_type is OrderType.LIMIT


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"quantity": "-1"}, InvalidAmountError),
        ({"quantity": "0"}, InvalidAmountError),
        ({"quantity": "NaN"}, InvalidAmountError),
        ({"quantity": "Infinity"}, InvalidAmountError),
        ({"quantity": "1e16"}, InvalidAmountError),
        ({"quantity": "0.00000000001"}, PrecisionExceededError),
        ({"limit_price": "-20"}, InvalidAmountError),
        ({"reference_price": "0"}, InvalidAmountError),
        ({"side": "hold"}, InvalidCommandError),
        ({"order_type": "iceberg"}, InvalidCommandError),
        ({"time_in_force": "forever"}, InvalidCommandError),
        ({"client_order_id": "x" * 65}, InvalidCommandError),
        ({"account_id": "not-a-uuid"}, InvalidCommandError),
        ({"quantity": None}, InvalidCommandError),
        ({"unexpected": 1}, InvalidCommandError),
    ],
)
def test_malformed_orders_are_refused_with_a_typed_error(
    changes: dict[str, Any], error: type[DomainError]
) -> None:
    with pytest.raises(error) as raised:
        parse(PlaceOrder, order_message(**changes))
    assert raised.value.code == error.code


FILL: dict[str, Any] = {
    "order_id": str(uuid4()),
    "fill_id": "F",
    "quantity": "1",
    "price": "1",
    "fee": "0",
    "venue": "X",
    "executed_at": "2025-01-06T14:30:00Z",
}
STRATEGY: dict[str, Any] = {"strategy_id": str(uuid4()), "name": "S", "owner_id": str(uuid4())}


@pytest.mark.parametrize(
    ("command_type", "message"),
    [
        (FillOrder, {**FILL, "executed_at": "2025-01-06T14:30:00"}),
        (FillOrder, {**FILL, "fill_id": ""}),
        (FillOrder, {**FILL, "venue": "V" * 65}),
        (OpenAccount, {"user_id": str(uuid4()), "currency": "usd"}),
        (CreateStrategy, {**STRATEGY, "parameters": {"threshold": 1.5}}),
        (CreateStrategy, {**STRATEGY, "parameters": {"Bad-Name": 1}}),
        (CreateStrategy, {**STRATEGY, "parameters": {f"p{n}": n for n in range(65)}}),
        (CreateStrategy, {**STRATEGY, "name": ""}),
    ],
)
def test_other_malformed_messages_are_invalid_commands(
    command_type: type[msgspec.Struct], message: dict[str, Any]
) -> None:
    with pytest.raises(InvalidCommandError) as raised:
        parse(command_type, msgspec.json.encode(message))
    assert raised.value.code == "INVALID_COMMAND"


def test_a_message_that_is_not_json_is_an_invalid_command() -> None:
    with pytest.raises(InvalidCommandError):
        parse(Deposit, b'{"account_id": ')


def test_an_oversized_message_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidCommandError):
        parse(Deposit, b" " * (COMMAND_BYTES_MAX + 1))


def test_a_signal_strength_above_one_is_refused() -> None:
    with pytest.raises(InvalidSignalError):
        EmitSignal(
            signal_id=uuid4(),
            strategy_id=uuid4(),
            instrument_id=uuid4(),
            action="BUY",  # type: ignore[arg-type]
            strength=Decimal("1.5"),
        )


def test_commands_built_in_python_are_checked_too() -> None:
    with pytest.raises(InvalidAmountError):
        Deposit(account_id=uuid4(), amount=Decimal("-5"))


def test_every_command_type_has_a_handler() -> None:
    import commands.accounts
    import commands.instruments
    import commands.orders
    import commands.signals
    import commands.strategies
    import commands.users

    modules = [
        commands.accounts,
        commands.instruments,
        commands.orders,
        commands.signals,
        commands.strategies,
        commands.users,
    ]
    defined = {
        value
        for module in modules
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == module.__name__
        and value.__struct_config__.forbid_unknown_fields
    }
    assert defined == set(HANDLERS)


async def test_orders_off_the_instruments_grid_are_refused_and_write_nothing(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    account_id = await new_account(ledger, cash="1000")
    instrument_id = await new_instrument(ledger, lot_size="5", tick_size="0.05")
    before = await count_events(pool)
    with pytest.raises(LotSizeViolationError):
        await place_order(
            ledger, limit_order(Side.BUY, account_id, instrument_id, "7", "10.05"), context()
        )
    with pytest.raises(TickSizeViolationError):
        await place_order(
            ledger, limit_order(Side.BUY, account_id, instrument_id, "5", "10.03"), context()
        )
    with pytest.raises(PrecisionExceededError):
        await place_order(
            ledger, limit_order(Side.BUY, account_id, instrument_id, "5", "10.055"), context()
        )
    with pytest.raises(PrecisionExceededError):
        await deposit(ledger, Deposit(account_id=account_id, amount=d("1.001")), context())
    with pytest.raises(OrderNotFoundError):
        await fill_order(ledger, fill_of(uuid4(), "5", "10"), context())
    assert await count_events(pool) == before


async def test_an_id_of_another_kind_of_stream_is_refused(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    account_id = await new_account(ledger, cash="1000")
    instrument_id = await new_instrument(ledger)
    before = await count_events(pool)
    as_account = limit_order(Side.BUY, instrument_id, instrument_id, "1", "1")
    with pytest.raises(WrongStreamTypeError) as raised:
        await place_order(ledger, as_account, context())
    assert raised.value.code == "WRONG_STREAM_TYPE"
    # An order id that is an existing account's, from a ledger that has it cached and
    # from one that reads it from the log.
    reused = limit_order(Side.BUY, account_id, instrument_id, "1", "1", order_id=account_id)
    with pytest.raises(WrongStreamTypeError):
        await place_order(ledger, reused, context())
    with pytest.raises(WrongStreamTypeError):
        await fill_order(bootstrap(pool), fill_of(account_id, "1", "1"), context())
    assert await count_events(pool) == before
