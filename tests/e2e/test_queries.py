"""Read-model queries over HTTP, fed by the real relay and projection workers.

One small market is built once through the command routes: two traders (alice, bob), each
with a funded USD account, an instrument, a strategy each, signals, orders, fills on two
days, a sell that realises P&L and a cancel. Every read passes the last command's
consistency token, so it sees every write before it without sleeping; the shared
database also holds other modules' rows, so lists are filtered to this market's.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from api.consistency import encode_token
from ledger.domain.user import Role
from ledger.store import Checkpoint
from tests.e2e.conftest import Api, User, assert_problem
from tests.e2e.projecting import Pipeline

DAY_ONE = "2025-03-03"
DAY_TWO = "2025-03-04"
CATCH_UP_ATTEMPTS = 60  # of up to 2 s each


class Market:
    """What the module's commands made, and the token of the last one."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.token: str | None = None

    async def command(self, path: str, user: User, body: Any, status: int) -> dict[str, Any]:
        response = await self.api.client.post(path, json=body, headers=user.headers)
        assert response.status_code == status, response.text
        answer: dict[str, Any] = response.json()
        if answer.get("consistency_token"):
            self.token = answer["consistency_token"]
        return answer

    async def get(self, path: str, user: User, **params: Any) -> Any:
        """GET with the last command's consistency token; the raw response."""
        params.setdefault("consistent_with", self.token)
        return await self.api.client.get(path, params=params, headers=user.headers)

    async def ok(self, path: str, user: User, **params: Any) -> Any:
        response = await self.get(path, user, **params)
        assert response.status_code == 200, response.text
        return response.json()

    async def open_account(self, owner: User) -> str:
        body = {"user_id": owner.user_id, "currency": "USD", "fee_rate": "0.001"}
        account_id: str = (await self.command("/api/v1/accounts", self.admin, body, 201))[
            "account_id"
        ]
        await self.command(
            f"/api/v1/accounts/{account_id}/deposits", self.admin, {"amount": "100000.00"}, 201
        )
        return account_id

    async def strategy(self, owner: User) -> str:
        body = {"name": f"momentum-{owner.email[:12]}", "owner_id": owner.user_id}
        strategy_id: str = (await self.command("/api/v1/strategies", self.admin, body, 201))[
            "strategy_id"
        ]
        await self.command(f"/api/v1/strategies/{strategy_id}/activate", self.admin, None, 200)
        return strategy_id

    async def signal(
        self, owner: User, strategy_id: str, action: str, instrument_id: str | None = None
    ) -> str:
        body = {
            "strategy_id": strategy_id,
            "instrument_id": instrument_id or self.instrument_id,
            "action": action,
            "strength": "0.75",
            "reasons": ["crossover"],
            "indicators": {"sma_20": "101.5"},
        }
        signal_id: str = (await self.command("/api/v1/signals", owner, body, 201))["signal_id"]
        return signal_id

    async def order(self, owner: User, account_id: str, side: str, price: str, **extra: Any) -> str:
        body = {
            "account_id": account_id,
            "instrument_id": self.instrument_id,
            "side": side,
            "order_type": "limit",
            "quantity": "10" if side == "buy" else "5",
            "limit_price": price,
            "time_in_force": "gtc",
            **extra,
        }
        answer = await self.command("/api/v1/orders", owner, body, 202)
        assert answer["status"] == "accepted", answer
        order_id: str = answer["order_id"]
        return order_id

    async def fill(self, order_id: str, fill_id: str, quantity: str, price: str, at: str) -> None:
        body = {
            "fill_id": fill_id,
            "quantity": quantity,
            "price": price,
            "fee": "1.00",
            "venue": "XNAS",
            "executed_at": at,
        }
        await self.command(f"/api/v1/orders/{order_id}/fills", self.execution, body, 201)

    async def list_instrument(self, symbol: str) -> str:
        body = {
            "symbol": symbol,
            "currency": "USD",
            "tick_size": "0.01",
            "lot_size": "1",
            "price_precision": 2,
            "quantity_precision": 0,
        }
        instrument_id: str = (await self.command("/api/v1/instruments", self.admin, body, 201))[
            "instrument_id"
        ]
        return instrument_id

    async def sync(self) -> None:
        """Take as token the log's last event, so reads also see writes made around the
        market's commands (users created directly in the store)."""
        assert self.api.settings.database_url is not None
        connection = await asyncpg.connect(self.api.settings.database_url)
        try:
            row = await connection.fetchrow(
                "SELECT tx, notification_id FROM ledger.events "
                "ORDER BY tx DESC, notification_id DESC LIMIT 1"
            )
        finally:
            await connection.close()
        assert row is not None
        self.token = encode_token(Checkpoint(row["tx"], row["notification_id"]))

    async def build(self) -> None:
        api = self.api
        self.admin = await api.user(Role.ADMIN)
        self.analyst = await api.user(Role.ANALYST)
        self.auditor = await api.user(Role.AUDITOR)
        self.execution = await api.user(Role.EXECUTION)
        self.alice = await api.user(Role.TRADER)
        self.bob = await api.user(Role.TRADER)
        self.symbol = f"Q{secrets.token_hex(3).upper()}"
        self.instrument_id = await self.list_instrument(self.symbol)
        # For the later tests' writes, so they change nothing the earlier tests count.
        self.other_instrument = await self.list_instrument(f"R{secrets.token_hex(3).upper()}")
        self.alice_account = await self.open_account(self.alice)
        self.bob_account = await self.open_account(self.bob)
        self.alice_strategy = await self.strategy(self.alice)
        self.bob_strategy = await self.strategy(self.bob)
        self.alice_signal = await self.signal(self.alice, self.alice_strategy, "BUY")
        self.bob_signal = await self.signal(self.bob, self.bob_strategy, "SELL")
        # Five buys (the first cites alice's signal), then bob's buy.
        self.alice_buys = [
            await self.order(self.alice, self.alice_account, "buy", "100.00", signal_id=signal)
            for signal in (self.alice_signal, None, None, None, None)
        ]
        self.bob_order = await self.order(self.bob, self.bob_account, "buy", "100.00")
        await self.fill(self.alice_buys[0], "a-1", "10", "99.50", f"{DAY_ONE}T14:00:00Z")
        await self.fill(self.alice_buys[1], "a-2", "4", "100.00", f"{DAY_TWO}T15:00:00Z")
        await self.fill(self.bob_order, "b-1", "10", "98.00", f"{DAY_ONE}T16:00:00Z")
        self.alice_sell = await self.order(self.alice, self.alice_account, "sell", "101.00")
        await self.fill(self.alice_sell, "a-3", "5", "101.00", f"{DAY_TWO}T16:00:00Z")
        await self.command(
            f"/api/v1/orders/{self.alice_buys[2]}/cancel", self.alice, {"reason": "enough"}, 202
        )
        self.alice_orders = {*self.alice_buys, self.alice_sell}
        await self.caught_up()

    async def caught_up(self) -> None:
        """Retry (bounded) each projection's list until it answers with the last token.

        The shared database holds every earlier module's events, which the relay and the
        workers, started with this module, first work through: a client would retry on
        CONSISTENCY_TIMEOUT as this does."""
        lists = [
            "/api/v1/users",
            "/api/v1/accounts",
            "/api/v1/instruments",
            "/api/v1/strategies",
            "/api/v1/signals",
            "/api/v1/orders",
            "/api/v1/trades",
            "/api/v1/positions",
            "/api/v1/daily-pnl",
        ]
        for path in lists:
            for _ in range(CATCH_UP_ATTEMPTS):
                response = await self.get(path, self.admin, limit=1)
                if response.status_code != 503:
                    break
            assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
async def market(api: Api, nats_url: str, stream_prefix: str) -> AsyncIterator[Market]:
    assert api.settings.database_url is not None
    pipeline = Pipeline(api.settings.database_url, nats_url, f"{stream_prefix}_QUERIES")
    await pipeline.start()
    try:
        built = Market(api)
        await built.build()
        yield built
    finally:
        await pipeline.stop()


PAGES_MAX = 300


async def all_pages(market: Market, path: str, user: User, key: str, **params: Any) -> list[Any]:
    """Every row of a list, following next_cursor (bounded: a list of at most 500 rows, the
    shared database's, read by pages of 2 ends within 251 pages)."""
    rows: list[Any] = []
    cursor = None
    for _ in range(PAGES_MAX):
        page = await market.ok(path, user, **params, **({"cursor": cursor} if cursor else {}))
        rows.extend(page[key])
        cursor = page["next_cursor"]
        if cursor is None:
            return rows
    raise AssertionError(f"{path} did not end within {PAGES_MAX} pages")


# Happy paths ------------------------------------------------------------------------


async def test_accounts_with_their_balances(market: Market) -> None:
    page = await market.ok("/api/v1/accounts", market.analyst, user_id=market.alice.user_id)
    assert [row["account_id"] for row in page["accounts"]] == [market.alice_account]
    account = page["accounts"][0]
    assert account["user_id"] == market.alice.user_id
    assert account["currency"] == "USD"
    assert Decimal(account["fee_rate"]) == Decimal("0.001")
    assert Decimal(account["total"]) == Decimal(account["available"]) + Decimal(account["reserved"])
    # Two open buys (10 at 100.00) and the partly filled one still hold cash.
    assert Decimal(account["reserved"]) > 0
    assert account["opened_at"].endswith("Z")
    one = await market.ok(f"/api/v1/accounts/{market.alice_account}", market.analyst)
    assert one == account


async def test_an_order_with_its_fills(market: Market) -> None:
    order = await market.ok(f"/api/v1/orders/{market.alice_buys[0]}", market.analyst)
    assert order["status"] == "filled"
    assert order["signal_id"] == market.alice_signal
    assert order["quantity"] == "10"
    assert order["limit_price"] == "100.00"
    assert order["fill_count"] == 1
    assert [fill["fill_id"] for fill in order["fills"]] == ["a-1"]
    fill = order["fills"][0]
    assert (fill["quantity"], fill["price"], fill["fee"], fill["venue"]) == (
        "10",
        "99.50",
        "1.00",
        "XNAS",
    )
    assert fill["executed_at"] == f"{DAY_ONE}T14:00:00Z"
    partial = await market.ok(f"/api/v1/orders/{market.alice_buys[1]}", market.analyst)
    assert (partial["status"], partial["filled_quantity"]) == ("partially_filled", "4")
    cancelled = await market.ok(f"/api/v1/orders/{market.alice_buys[2]}", market.analyst)
    assert (cancelled["status"], cancelled["reason"], cancelled["fills"]) == (
        "cancelled",
        "enough",
        [],
    )


async def test_orders_of_an_account(market: Market) -> None:
    page = await market.ok("/api/v1/orders", market.analyst, account_id=market.alice_account)
    orders = page["orders"]
    assert {order["order_id"] for order in orders} == market.alice_orders
    assert "fills" not in orders[0]
    placed = [order["placed_at"] for order in orders]
    assert placed == sorted(placed, reverse=True)
    assert orders[0]["order_id"] == market.alice_sell  # the newest


async def test_trades_positions_and_daily_pnl_agree(market: Market) -> None:
    trades = (await market.ok("/api/v1/trades", market.analyst, account_id=market.alice_account))[
        "trades"
    ]
    assert [(trade["fill_id"], trade["side"]) for trade in trades] == [
        ("a-3", "sell"),
        ("a-2", "buy"),
        ("a-1", "buy"),
    ]
    assert all(trade["instrument_id"] == market.instrument_id for trade in trades)
    one = await market.ok(f"/api/v1/trades/{market.alice_sell}/a-3", market.analyst)
    assert one == trades[0]
    assert Decimal(one["realised_pnl"]) != 0

    positions = (
        await market.ok("/api/v1/positions", market.analyst, account_id=market.alice_account)
    )["positions"]
    assert len(positions) == 1
    position = positions[0]
    assert position["instrument_id"] == market.instrument_id
    assert position["quantity"] == "9"  # 10 + 4 bought, 5 sold
    assert position["trade_count"] == 3
    assert Decimal(position["average_cost"]) > Decimal("99.50")
    realised = sum(Decimal(trade["realised_pnl"]) for trade in trades)
    assert Decimal(position["realised_pnl"]) == realised
    assert await market.ok(f"/api/v1/positions/{position['position_id']}", market.analyst) == (
        position
    )

    days = (await market.ok("/api/v1/daily-pnl", market.analyst, account_id=market.alice_account))[
        "days"
    ]
    assert [day["day"] for day in days] == [DAY_TWO, DAY_ONE]
    assert [day["trade_count"] for day in days] == [2, 1]
    assert sum(Decimal(day["realised_pnl"]) for day in days) == realised
    assert sum(Decimal(day["fees"]) for day in days) == Decimal("3.00")
    assert Decimal(days[1]["bought_notional"]) == Decimal("995.00")
    for day in days:
        assert Decimal(day["net_pnl"]) == Decimal(day["realised_pnl"]) - Decimal(day["fees"])
    one_day = await market.ok(f"/api/v1/daily-pnl/{market.alice_account}/{DAY_ONE}", market.analyst)
    assert one_day == days[1]


async def test_signals_and_strategies(market: Market) -> None:
    signals = (
        await market.ok("/api/v1/signals", market.analyst, instrument_id=market.instrument_id)
    )["signals"]
    assert [signal["signal_id"] for signal in signals] == [market.bob_signal, market.alice_signal]
    alice = signals[1]
    assert (alice["strategy_id"], alice["action"], Decimal(alice["strength"])) == (
        market.alice_strategy,
        "BUY",
        Decimal("0.75"),
    )
    assert (alice["reasons"], alice["indicators"]) == (["crossover"], {"sma_20": "101.5"})
    assert await market.ok(f"/api/v1/signals/{market.alice_signal}", market.analyst) == alice

    strategy = await market.ok(f"/api/v1/strategies/{market.alice_strategy}", market.analyst)
    assert (strategy["owner_id"], strategy["active"], strategy["parameters"]) == (
        market.alice.user_id,
        True,
        {},
    )
    listed = await market.ok("/api/v1/strategies", market.analyst, owner_id=market.alice.user_id)
    assert listed["strategies"] == [strategy]


@pytest.mark.parametrize("role", list(Role))
async def test_instruments_are_read_by_every_role(market: Market, role: Role) -> None:
    user = await market.api.user(role)
    page = await market.ok("/api/v1/instruments", user, symbol=market.symbol.lower())
    assert [row["instrument_id"] for row in page["instruments"]] == [market.instrument_id]
    instrument = page["instruments"][0]
    assert (instrument["symbol"], instrument["tick_size"], instrument["status"]) == (
        market.symbol,
        "0.01",
        "listed",
    )
    one = await market.ok(f"/api/v1/instruments/{market.instrument_id}", user)
    assert one == instrument


async def test_users_for_admins(market: Market) -> None:
    user = await market.ok(f"/api/v1/users/{market.alice.user_id}", market.admin)
    assert (user["email"], user["role"], user["disabled"]) == (
        market.alice.email,
        "trader",
        False,
    )
    assert "password_hash" not in user
    auditors = await all_pages(market, "/api/v1/users", market.admin, "users", role="auditor")
    assert market.auditor.user_id in {row["user_id"] for row in auditors}
    assert {row["role"] for row in auditors} == {"auditor"}


# Roles and visibility -------------------------------------------------------------


def _others(market: Market) -> list[tuple[str, str]]:
    """Get-by-id paths of bob's things (and what is booked on them), which alice may not
    see, with the code of their 404."""
    return [
        (f"/api/v1/accounts/{market.bob_account}", "ACCOUNT_NOT_FOUND"),
        (f"/api/v1/orders/{market.bob_order}", "ORDER_NOT_FOUND"),
        (f"/api/v1/trades/{market.bob_order}/b-1", "TRADE_NOT_FOUND"),
        (f"/api/v1/daily-pnl/{market.bob_account}/{DAY_ONE}", "DAILY_PNL_NOT_FOUND"),
        (f"/api/v1/signals/{market.bob_signal}", "SIGNAL_NOT_FOUND"),
        (f"/api/v1/strategies/{market.bob_strategy}", "STRATEGY_NOT_FOUND"),
    ]


async def test_a_trader_gets_404_for_what_is_not_theirs(market: Market) -> None:
    bob_positions = await market.ok("/api/v1/positions", market.bob)
    position_id = bob_positions["positions"][0]["position_id"]
    paths = [*_others(market), (f"/api/v1/positions/{position_id}", "POSITION_NOT_FOUND")]
    for path, code in paths:
        # Bob and the analyst see it; for alice it does not exist.
        assert (await market.get(path, market.bob)).status_code == 200, path
        assert (await market.get(path, market.analyst)).status_code == 200, path
        body = assert_problem(await market.get(path, market.alice), 404, code)
        assert "belongs" not in body["detail"]


async def test_a_trader_lists_only_their_own(market: Market) -> None:
    alice = market.alice
    accounts = await all_pages(market, "/api/v1/accounts", alice, "accounts")
    assert [row["account_id"] for row in accounts] == [market.alice_account]
    orders = await all_pages(market, "/api/v1/orders", alice, "orders")
    assert {row["order_id"] for row in orders} == market.alice_orders
    trades = await all_pages(market, "/api/v1/trades", alice, "trades")
    assert {row["fill_id"] for row in trades} == {"a-1", "a-2", "a-3"}
    positions = await all_pages(market, "/api/v1/positions", alice, "positions")
    assert {row["account_id"] for row in positions} == {market.alice_account}
    days = await all_pages(market, "/api/v1/daily-pnl", alice, "days")
    assert {row["account_id"] for row in days} == {market.alice_account}
    signals = await all_pages(market, "/api/v1/signals", alice, "signals")
    assert [row["signal_id"] for row in signals] == [market.alice_signal]
    strategies = await all_pages(market, "/api/v1/strategies", alice, "strategies")
    assert [row["strategy_id"] for row in strategies] == [market.alice_strategy]
    # Naming another's account or strategy finds nothing rather than their rows.
    theirs = await market.ok("/api/v1/orders", alice, account_id=market.bob_account)
    assert theirs["orders"] == []
    assert (await market.ok("/api/v1/accounts", alice, user_id=market.bob.user_id))[
        "accounts"
    ] == []
    assert (await market.ok("/api/v1/signals", alice, strategy_id=market.bob_strategy))[
        "signals"
    ] == []


TRADING_LISTS = [
    "/api/v1/accounts",
    "/api/v1/orders",
    "/api/v1/trades",
    "/api/v1/positions",
    "/api/v1/daily-pnl",
    "/api/v1/signals",
    "/api/v1/strategies",
]


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.EXECUTION])
async def test_auditors_and_venues_do_not_read_trading_read_models(
    market: Market, role: Role
) -> None:
    user = market.auditor if role is Role.AUDITOR else market.execution
    for path in [*TRADING_LISTS, f"/api/v1/orders/{market.alice_buys[0]}", "/api/v1/users"]:
        assert_problem(await market.get(path, user), 403, "FORBIDDEN")


@pytest.mark.parametrize("role", [Role.TRADER, Role.ANALYST])
async def test_users_are_not_listed_for_other_roles(market: Market, role: Role) -> None:
    user = market.alice if role is Role.TRADER else market.analyst
    assert_problem(await market.get("/api/v1/users", user), 403, "FORBIDDEN")
    assert_problem(
        await market.get(f"/api/v1/users/{market.alice.user_id}", user), 403, "FORBIDDEN"
    )


@pytest.mark.parametrize("path", [*TRADING_LISTS, "/api/v1/instruments", "/api/v1/users"])
async def test_queries_need_a_token(market: Market, path: str) -> None:
    assert_problem(await market.api.client.get(path), 401, "TOKEN_MISSING")


async def test_a_missing_row_is_a_404(market: Market) -> None:
    nobody = "00000000-0000-4000-8000-000000000001"
    for path, code in [
        (f"/api/v1/accounts/{nobody}", "ACCOUNT_NOT_FOUND"),
        (f"/api/v1/orders/{nobody}", "ORDER_NOT_FOUND"),
        (f"/api/v1/trades/{market.alice_buys[0]}/nope", "TRADE_NOT_FOUND"),
        (f"/api/v1/trades/{market.alice_buys[0]}/a%00", "TRADE_NOT_FOUND"),
        (f"/api/v1/positions/{nobody}", "POSITION_NOT_FOUND"),
        (f"/api/v1/daily-pnl/{market.alice_account}/2020-01-01", "DAILY_PNL_NOT_FOUND"),
        (f"/api/v1/signals/{nobody}", "SIGNAL_NOT_FOUND"),
        (f"/api/v1/strategies/{nobody}", "STRATEGY_NOT_FOUND"),
        (f"/api/v1/instruments/{nobody}", "INSTRUMENT_NOT_FOUND"),
        (f"/api/v1/users/{nobody}", "USER_NOT_FOUND"),
    ]:
        assert_problem(await market.get(path, market.admin), 404, code)


# Paging -----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize("limit", [1, 2, 4])
async def test_pages_hold_every_row_once(market: Market, order: str, limit: int) -> None:
    whole = await market.ok(
        "/api/v1/orders", market.analyst, account_id=market.alice_account, order=order
    )
    assert whole["next_cursor"] is None
    expected = [row["order_id"] for row in whole["orders"]]
    pages: list[list[str]] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"account_id": market.alice_account, "limit": limit}
        params["order"] = order
        if cursor is not None:
            params["cursor"] = cursor
        page = await market.ok("/api/v1/orders", market.analyst, **params)
        pages.append([row["order_id"] for row in page["orders"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [row for page in pages for row in page] == expected
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit  # no empty last page
    placed = [row["placed_at"] for row in whole["orders"]]
    assert placed == sorted(placed, reverse=order == "desc")


@pytest.mark.parametrize(
    ("path", "key", "id_of"),
    [
        ("/api/v1/accounts", "accounts", "account_id"),
        ("/api/v1/orders", "orders", "order_id"),
        ("/api/v1/trades", "trades", "fill_id"),
        ("/api/v1/positions", "positions", "position_id"),
        ("/api/v1/daily-pnl", "days", "day"),
        ("/api/v1/signals", "signals", "signal_id"),
        ("/api/v1/strategies", "strategies", "strategy_id"),
        ("/api/v1/instruments", "instruments", "instrument_id"),
        ("/api/v1/users", "users", "user_id"),
    ],
)
async def test_every_list_pages_the_whole_table(
    market: Market, path: str, key: str, id_of: str
) -> None:
    """Page by 2 through everything an admin sees; compare with one big page."""
    await market.sync()
    whole = await market.ok(path, market.admin, limit=500)
    if whole["next_cursor"] is not None:
        pytest.skip("more than 500 rows in the shared database")
    paged = await all_pages(market, path, market.admin, key, limit=2)
    assert paged == whole[key]
    ids = [
        (row[id_of], row.get("account_id"), row.get("order_id")) for row in paged
    ]  # composite for trades and days
    assert len(set(ids)) == len(ids)


# Filters ----------------------------------------------------------------------------


async def test_order_filters(market: Market) -> None:
    def ids(page: dict[str, Any]) -> set[str]:
        return {row["order_id"] for row in page["orders"]}

    mine = {"account_id": market.alice_account}
    by_status = await market.ok("/api/v1/orders", market.analyst, **mine, status="accepted")
    assert ids(by_status) == set(market.alice_buys[3:])
    sells = await market.ok("/api/v1/orders", market.analyst, **mine, side="sell")
    assert ids(sells) == {market.alice_sell}
    cited = await market.ok("/api/v1/orders", market.analyst, signal_id=market.alice_signal)
    assert ids(cited) == {market.alice_buys[0]}
    by_symbol = await market.ok("/api/v1/orders", market.analyst, symbol=market.symbol)
    assert ids(by_symbol) == {*market.alice_orders, market.bob_order}
    by_instrument = await market.ok(
        "/api/v1/orders", market.analyst, instrument_id=market.instrument_id, status="filled"
    )
    assert ids(by_instrument) == {market.alice_buys[0], market.alice_sell, market.bob_order}
    # A time range: from the third order's placing (inclusive) to the fifth's (exclusive).
    ordered = (await market.ok("/api/v1/orders", market.analyst, **mine, order="asc"))["orders"]
    start, end = ordered[2]["placed_at"], ordered[4]["placed_at"]
    ranged = await market.ok("/api/v1/orders", market.analyst, **mine, to=end, **{"from": start})
    assert ids(ranged) == {row["order_id"] for row in ordered[2:4]}


async def test_trade_filters(market: Market) -> None:
    def fills(page: dict[str, Any]) -> list[str]:
        return [row["fill_id"] for row in page["trades"]]

    sym = {"symbol": market.symbol}
    assert fills(await market.ok("/api/v1/trades", market.analyst, **sym)) == [
        "a-3",
        "a-2",
        "b-1",
        "a-1",
    ]
    assert fills(await market.ok("/api/v1/trades", market.analyst, **sym, side="sell")) == ["a-3"]
    by_order = await market.ok("/api/v1/trades", market.analyst, order_id=market.alice_buys[1])
    assert fills(by_order) == ["a-2"]
    day_one = await market.ok(
        "/api/v1/trades",
        market.analyst,
        **sym,
        to=f"{DAY_TWO}T00:00:00Z",
        **{"from": f"{DAY_ONE}T00:00:00+00:00"},
    )
    assert fills(day_one) == ["b-1", "a-1"]
    bob = await market.ok("/api/v1/trades", market.analyst, **sym, account_id=market.bob_account)
    assert fills(bob) == ["b-1"]
    oldest_first = await market.ok("/api/v1/trades", market.analyst, **sym, order="asc")
    assert fills(oldest_first) == ["a-1", "b-1", "a-2", "a-3"]


async def test_position_daily_pnl_and_account_filters(market: Market) -> None:
    sym = {"symbol": market.symbol}
    open_ = await market.ok("/api/v1/positions", market.analyst, **sym, open="true")
    assert {row["account_id"] for row in open_["positions"]} == {
        market.alice_account,
        market.bob_account,
    }
    flat = await market.ok("/api/v1/positions", market.analyst, **sym, open="false")
    assert flat["positions"] == []
    by_instrument = await market.ok(
        "/api/v1/positions", market.analyst, instrument_id=market.instrument_id
    )
    assert len(by_instrument["positions"]) == 2

    days = await market.ok(
        "/api/v1/daily-pnl",
        market.analyst,
        account_id=market.alice_account,
        to=DAY_TWO,
        **{"from": DAY_ONE},
    )
    assert [row["day"] for row in days["days"]] == [DAY_ONE]
    accounts = await market.ok(
        "/api/v1/accounts", market.analyst, user_id=market.bob.user_id, currency="USD"
    )
    assert [row["account_id"] for row in accounts["accounts"]] == [market.bob_account]
    none = await market.ok(
        "/api/v1/accounts", market.analyst, user_id=market.bob.user_id, currency="EUR"
    )
    assert none["accounts"] == []


async def test_signal_strategy_instrument_and_user_filters(market: Market) -> None:
    def ids(page: dict[str, Any], key: str, field: str) -> list[str]:
        return [row[field] for row in page[key]]

    sells = await market.ok("/api/v1/signals", market.analyst, symbol=market.symbol, action="SELL")
    assert ids(sells, "signals", "signal_id") == [market.bob_signal]
    by_strategy = await market.ok(
        "/api/v1/signals", market.analyst, strategy_id=market.alice_strategy
    )
    assert ids(by_strategy, "signals", "signal_id") == [market.alice_signal]
    emitted = (await market.ok(f"/api/v1/signals/{market.bob_signal}", market.analyst))[
        "emitted_at"
    ]
    later = datetime.fromisoformat(emitted) + timedelta(microseconds=1)
    before_bob = await market.ok(
        "/api/v1/signals", market.analyst, symbol=market.symbol, to=emitted
    )
    assert ids(before_bob, "signals", "signal_id") == [market.alice_signal]
    after = await market.ok(
        "/api/v1/signals", market.analyst, symbol=market.symbol, **{"from": later.isoformat()}
    )
    assert after["signals"] == []

    active = await market.ok(
        "/api/v1/strategies", market.analyst, owner_id=market.bob.user_id, active="true"
    )
    assert ids(active, "strategies", "strategy_id") == [market.bob_strategy]
    inactive = await market.ok(
        "/api/v1/strategies", market.analyst, owner_id=market.bob.user_id, active="false"
    )
    assert inactive["strategies"] == []

    listed = await market.ok(
        "/api/v1/instruments", market.alice, symbol=market.symbol, status="listed", currency="USD"
    )
    assert ids(listed, "instruments", "instrument_id") == [market.instrument_id]
    halted = await market.ok(
        "/api/v1/instruments", market.alice, symbol=market.symbol, status="halted"
    )
    assert halted["instruments"] == []

    enabled = await all_pages(
        market, "/api/v1/users", market.admin, "users", role="trader", disabled="false"
    )
    assert {market.alice.user_id, market.bob.user_id} <= {row["user_id"] for row in enabled}
    assert all(not row["disabled"] and row["role"] == "trader" for row in enabled)


# Invalid input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"status": "lost"}, "status"),
        ({"account_id": "not-a-uuid"}, "account_id"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2025-03-03T00:00:00"}, "from"),
        ({"to": "2025-03-03T00:00:00"}, "to"),
        ({"from": "2025-03-04T00:00:00Z", "to": "2025-03-03T00:00:00Z"}, "to"),
        ({"from": "2025-03-04T00:00:00Z", "to": "2025-03-04T00:00:00Z"}, "to"),
    ],
)
async def test_invalid_parameters_are_400_with_the_field(
    market: Market, params: dict[str, str], field: str
) -> None:
    response = await market.get("/api/v1/orders", market.analyst, **params)
    body = assert_problem(response, 400, "VALIDATION_ERROR")
    assert field in {error["field"] for error in body["errors"]}, body
    assert {error["source"] for error in body["errors"]} == {"query"}


async def test_daily_pnl_days_are_validated(market: Market) -> None:
    for params in ({"from": "2025-13-01"}, {"from": DAY_TWO, "to": DAY_ONE}):
        response = await market.get("/api/v1/daily-pnl", market.analyst, **params)
        body = assert_problem(response, 400, "VALIDATION_ERROR")
        assert {error["field"] for error in body["errors"]} & {"from", "to"}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_cursors_that_are_not_this_lists_are_400(market: Market) -> None:
    page = await market.ok(
        "/api/v1/orders", market.analyst, account_id=market.alice_account, limit=1
    )
    orders_cursor = page["next_cursor"]
    signals = await market.ok("/api/v1/signals", market.analyst, limit=1)
    assert signals["next_cursor"] is not None
    bad = [
        "!!!",
        "x" * 600,
        _b64(b"not json"),
        _b64(b'["orders", "desc", ["yesterday", "nope"]]'),
        _b64(b'["orders", "desc", []]'),
        _b64(b'{"orders": 1}'),
        _b64(b'["orders", "desc", ["2025-03-03T00:00:00", "%s"]]' % market.bob_order.encode()),
        signals["next_cursor"],  # another list's
    ]
    for cursor in bad:
        response = await market.get("/api/v1/orders", market.analyst, cursor=cursor)
        body = assert_problem(response, 400, "INVALID_CURSOR")
        assert body["errors"][0]["field"] == "cursor"
    nul = _b64(
        b'["trades", "desc", ["2025-03-03T00:00:00Z", "%s", "a\\u0000"]]'
        % (market.bob_order.encode())
    )
    assert_problem(
        await market.get("/api/v1/trades", market.analyst, cursor=nul), 400, "INVALID_CURSOR"
    )
    # The same list's cursor with the other order.
    response = await market.get("/api/v1/orders", market.analyst, cursor=orders_cursor, order="asc")
    assert_problem(response, 400, "INVALID_CURSOR")


@pytest.mark.parametrize(
    "token",
    [
        "!!!",
        "x" * 100,
        _b64(b"12"),
        _b64(b"a.b"),
        _b64(b"-1.5"),
        _b64(f"{2**64}.1".encode()),
        encode_token(Checkpoint(1, 2**62)),  # decodes, but names no event
    ],
)
async def test_a_malformed_consistency_token_is_400(market: Market, token: str) -> None:
    response = await market.get(
        f"/api/v1/accounts/{market.alice_account}", market.analyst, consistent_with=token
    )
    body = assert_problem(response, 400, "INVALID_CONSISTENCY_TOKEN")
    assert body["errors"][0]["field"] == "consistent_with"


# Read-your-writes -------------------------------------------------------------------


async def test_each_write_is_seen_by_the_next_read(market: Market) -> None:
    """Command, then at once a query with its token: the query reflects the command."""
    for number in range(1, 6):
        before = await market.ok(f"/api/v1/accounts/{market.bob_account}", market.bob)
        await market.command(
            f"/api/v1/accounts/{market.bob_account}/deposits",
            market.admin,
            {"amount": f"{number}.25"},
            201,
        )
        after = await market.ok(f"/api/v1/accounts/{market.bob_account}", market.bob)
        assert Decimal(after["available"]) - Decimal(before["available"]) == Decimal(f"{number}.25")
        assert after["version"] == before["version"] + 1

        signal_id = await market.signal(
            market.bob, market.bob_strategy, "HOLD", market.other_instrument
        )
        signal = await market.ok(f"/api/v1/signals/{signal_id}", market.bob)
        assert signal["action"] == "HOLD"

        order_id = await market.order(
            market.bob, market.bob_account, "buy", "97.00", instrument_id=market.other_instrument
        )
        listed = await market.ok("/api/v1/orders", market.bob, limit=1)
        assert listed["orders"][0]["order_id"] == order_id
        await market.fill(order_id, f"b-rw-{number}", "10", "97.00", f"{DAY_TWO}T12:00:00Z")
        trade = await market.ok(f"/api/v1/trades/{order_id}/b-rw-{number}", market.bob)
        assert trade["price"] == "97.00"


async def test_a_new_traders_first_reads_see_their_first_writes(market: Market) -> None:
    """The account opened a moment ago is found through read.accounts at once: a trader's
    query also waits for the accounts projection."""
    carol = await market.api.user(Role.TRADER)
    account_id = await market.open_account(carol)
    order_id = await market.order(
        carol, account_id, "buy", "100.00", instrument_id=market.other_instrument
    )
    orders = await market.ok("/api/v1/orders", carol)
    assert [row["order_id"] for row in orders["orders"]] == [order_id]
    accounts = await market.ok("/api/v1/accounts", carol)
    assert [row["account_id"] for row in accounts["accounts"]] == [account_id]


async def test_the_openapi_schema_names_roles_and_the_consistency_parameter(market: Market) -> None:
    spec = (await market.api.client.get("/schema/openapi.json")).json()
    for path, roles in [
        ("/api/v1/orders", "trader, analyst, admin"),
        ("/api/v1/instruments", "admin, trader, analyst, auditor, execution"),
        ("/api/v1/users", "admin"),
    ]:
        operation = spec["paths"][path]["get"]
        assert f"**Roles:** {roles}" in operation["description"]
        names = [parameter["name"] for parameter in operation["parameters"]]
        assert {"consistent_with", "cursor", "limit", "order"} <= set(names)
        assert operation["security"] == [{"BearerToken": []}]
