"""The read models' declarations (api/queries/model.py) and what is built from them: the
columns and conversions read from the view Structs, the keysets and paths typed by them,
the filters' conditions, and declarations that contradict their view (no I/O)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest

from api.errors import ApiProblem
from api.queries import MODELS, accounts, daily_pnl, orders, route_handlers, signals, trades
from api.queries.filters import SYMBOL, Range, Switch, equals
from api.queries.model import Doc, ReadModel
from api.queries.paging import UtcTime
from api.queries.rows import Columns
from api.queries.schemas import AccountView, OrderDetail, OrderView, SignalView
from commands.instruments import instrument_stream_id
from ledger.domain.order import OrderStatus

NOW = datetime(2025, 3, 3, 14, 0, tzinfo=UTC)


def test_routes_are_named_and_placed_as_the_written_handlers_were() -> None:
    """The handler names make the OpenAPI operation ids; the paths are the contract."""
    assert [(handler.handler_name, handler.paths) for handler in route_handlers] == [
        ("list_accounts", {"/api/v1/accounts"}),
        ("get_account", {"/api/v1/accounts/{account_id:uuid}"}),
        ("list_orders", {"/api/v1/orders"}),
        ("get_order", {"/api/v1/orders/{order_id:uuid}"}),
        ("list_trades", {"/api/v1/trades"}),
        ("get_trade", {"/api/v1/trades/{order_id:uuid}/{fill_id:str}"}),
        ("list_positions", {"/api/v1/positions"}),
        ("get_position", {"/api/v1/positions/{position_id:uuid}"}),
        ("list_daily_pnl", {"/api/v1/daily-pnl"}),
        ("get_daily_pnl", {"/api/v1/daily-pnl/{account_id:uuid}/{day:date}"}),
        ("list_signals", {"/api/v1/signals"}),
        ("get_signal", {"/api/v1/signals/{signal_id:uuid}"}),
        ("list_strategies", {"/api/v1/strategies"}),
        ("get_strategy", {"/api/v1/strategies/{strategy_id:uuid}"}),
        ("list_instruments", {"/api/v1/instruments"}),
        ("get_instrument", {"/api/v1/instruments/{instrument_id:uuid}"}),
        ("list_users", {"/api/v1/users"}),
        ("get_user", {"/api/v1/users/{user_id:uuid}"}),
    ]


def test_keysets_take_the_views_types() -> None:
    assert trades.KEYSET.key_type == tuple[UtcTime, UUID, str]
    assert daily_pnl.MODEL.keyset.key_type == tuple[date, UUID]
    assert all(model.keyset.name == model.name for model in MODELS)


def test_a_view_is_the_list_of_its_columns() -> None:
    columns = Columns(AccountView, derived=accounts.MODEL.derived)
    assert "total" not in columns.columns  # derived, not selected
    assert columns.select("read.accounts").startswith("SELECT account_id, user_id, currency, ")
    detail = Columns(OrderDetail, omitted=["fills"])
    assert detail.columns == Columns(OrderView).columns


def test_a_row_becomes_its_view() -> None:
    account_id, user_id = uuid4(), uuid4()
    row = {
        "account_id": account_id,
        "user_id": user_id,
        "currency": "USD",
        "available": Decimal("100000.00"),
        "reserved": Decimal("250.5"),
        "allow_short_selling": False,
        "fee_rate": Decimal("0.001"),
        "max_order_notional": None,
        "opened_at": NOW,
        "updated_at": NOW,
        "version": 3,
    }
    view = Columns(AccountView, derived=accounts.MODEL.derived).view_of(row)
    assert view == AccountView(
        account_id=account_id,
        user_id=user_id,
        currency="USD",
        available="100000.00",
        reserved="250.5",
        total="100250.50",
        allow_short_selling=False,
        fee_rate="0.001",
        max_order_notional=None,
        opened_at=NOW,
        updated_at=NOW,
        version=3,
    )


def test_jsonb_columns_are_decoded_into_their_fields_types() -> None:
    row = {
        "signal_id": uuid4(),
        "strategy_id": uuid4(),
        "instrument_id": uuid4(),
        "action": "BUY",
        "strength": Decimal("0.75"),
        "reasons": '["crossover"]',
        "indicators": '{"sma_20": "101.5"}',
        "emitted_at": NOW,
    }
    view = Columns(SignalView).view_of(row)
    assert isinstance(view, SignalView)
    assert (view.strength, view.reasons, view.indicators) == (
        "0.75",
        ["crossover"],
        {"sma_20": "101.5"},
    )


def test_filters_turn_the_values_given_into_conditions() -> None:
    assert equals("status", OrderStatus).conditions({"status": OrderStatus.FILLED}) == [
        ("status = {}", ("filled",))
    ]
    assert equals("status", OrderStatus).conditions({"status": None}) == []
    assert SYMBOL.conditions({"symbol": "ACME"}) == [
        ("instrument_id = {}", (instrument_stream_id("ACME"),))
    ]
    open_ = Switch("open", when_true="quantity <> 0", when_false="quantity = 0")
    assert open_.conditions({"open": False}) == [("quantity = 0", ())]
    start = "2025-03-03T00:00:00Z"
    assert Range("placed_at").conditions({"from_": start, "to": None}) == [
        ("placed_at >= {}", (datetime(2025, 3, 3, tzinfo=UTC),))
    ]
    assert Range("day", days=True).conditions({"from_": None, "to": "2025-03-04"}) == [
        ("day < {}", (date(2025, 3, 4),))
    ]
    with pytest.raises(ApiProblem) as raised:
        Range("placed_at").conditions({"from_": "2025-03-03", "to": None})
    assert raised.value.errors == [
        {"field": "from", "source": "query", "message": raised.value.detail}
    ]


def _model(**overrides: Any) -> ReadModel:
    given: dict[str, Any] = {
        "name": "orders",
        "one": "order",
        "table": "read.orders",
        "view": OrderView,
        "sort": ("placed_at", "order_id"),
        "key": ("order_id",),
        "listing": Doc("List"),
        "reading": Doc("One"),
        **overrides,
    }
    return ReadModel(**given)


@pytest.mark.parametrize(
    "overrides",
    [
        {"sort": ("opened_at", "order_id")},  # not a column of the view
        {"sort": ("limit_price", "order_id")},  # a decimal string: no cursor type for it
        {"sort": ("placed_at",), "key": ("order_id",)},  # the key does not end the sort
        {"key": ("version",)},  # an int has no path type here
        {"filters": (Range("placed_at"), Range("updated_at"))},  # `from` twice
        {"detail": OrderDetail},  # a detail without the children that fill it
    ],
)
def test_a_declaration_that_contradicts_its_view_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(AssertionError):
        _model(**overrides)


def test_the_declarations_as_written_are_accepted() -> None:
    assert _model().get_path == "/api/v1/orders/{order_id:uuid}"
    assert orders.MODEL.children is not None
    assert signals.MODEL.owned_through == "strategies"
