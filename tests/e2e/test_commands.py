"""Command routes: each role allowed and denied, validation codes, idempotency."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from commands.runtime import Ledger
from ledger.domain.user import Role
from tests.e2e.conftest import Api, User, assert_problem

OTHER_ROLES = [Role.ANALYST, Role.AUDITOR, Role.EXECUTION]


class World:
    """An admin, a trader with a funded USD account, an instrument and an active strategy."""

    admin: User
    trader: User
    account_id: str
    instrument_id: str
    strategy_id: str


async def _world(api: Api, *, funds: str = "100000.00") -> World:
    world = World()
    world.admin = await api.user(Role.ADMIN)
    world.trader = await api.user(Role.TRADER)
    opened = await api.client.post(
        "/api/v1/accounts",
        json={"user_id": world.trader.user_id, "currency": "USD"},
        headers=world.admin.headers,
    )
    assert opened.status_code == 201, opened.text
    world.account_id = opened.json()["account_id"]
    deposited = await api.client.post(
        f"/api/v1/accounts/{world.account_id}/deposits",
        json={"amount": funds, "reference": "wire"},
        headers=world.admin.headers,
    )
    assert deposited.status_code == 201, deposited.text
    listed = await api.client.post(
        "/api/v1/instruments",
        json={
            "symbol": f"T{secrets.token_hex(3).upper()}",
            "currency": "USD",
            "tick_size": "0.05",
            "lot_size": "1",
            "price_precision": 2,
            "quantity_precision": 0,
        },
        headers=world.admin.headers,
    )
    assert listed.status_code == 201, listed.text
    world.instrument_id = listed.json()["instrument_id"]
    created = await api.client.post(
        "/api/v1/strategies",
        json={"name": "momentum", "owner_id": world.trader.user_id, "parameters": {"window": 20}},
        headers=world.admin.headers,
    )
    assert created.status_code == 201, created.text
    world.strategy_id = created.json()["strategy_id"]
    activated = await api.client.post(
        f"/api/v1/strategies/{world.strategy_id}/activate", headers=world.admin.headers
    )
    assert activated.status_code == 200, activated.text
    return world


@pytest.fixture
async def world(api: Api) -> World:
    return await _world(api)


def _order(world: World, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "account_id": world.account_id,
        "instrument_id": world.instrument_id,
        "side": "buy",
        "order_type": "limit",
        "quantity": "10",
        "limit_price": "100.00",
        "time_in_force": "gtc",
    }
    body.update(changes)
    return body


async def _stream_event_count(api: Api, stream_id: str) -> int:
    assert api.settings.database_url is not None
    connection = await asyncpg.connect(api.settings.database_url)
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM ledger.events WHERE originator_id = $1::uuid", stream_id
        )
    finally:
        await connection.close()
    return int(count)


# Accounts -----------------------------------------------------------------------


async def test_a_trader_opens_their_own_account_but_not_another_users(api: Api) -> None:
    trader = await api.user(Role.TRADER)
    other = await api.user(Role.TRADER)
    own = await api.client.post(
        "/api/v1/accounts",
        json={"user_id": trader.user_id, "currency": "EUR"},
        headers=trader.headers,
    )
    assert own.status_code == 201, own.text
    assert own.json()["consistency_token"]
    theirs = await api.client.post(
        "/api/v1/accounts",
        json={"user_id": other.user_id, "currency": "EUR"},
        headers=trader.headers,
    )
    assert_problem(theirs, 403, "FORBIDDEN")


@pytest.mark.parametrize("role", OTHER_ROLES)
async def test_other_roles_cannot_open_accounts(api: Api, role: Role) -> None:
    user = await api.user(role)
    response = await api.client.post(
        "/api/v1/accounts", json={"user_id": user.user_id, "currency": "USD"}, headers=user.headers
    )
    assert_problem(response, 403, "FORBIDDEN")


async def test_deposit_by_an_admin(api: Api, world: World) -> None:
    response = await api.client.post(
        f"/api/v1/accounts/{world.account_id}/deposits",
        json={"amount": "12.50"},
        headers=world.admin.headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["account_id"] == world.account_id
    assert body["amount"] == "12.50"
    assert isinstance(body["consistency_token"], str)


@pytest.mark.parametrize("role", [Role.TRADER, *OTHER_ROLES])
async def test_deposit_is_denied_to_every_other_role(api: Api, world: World, role: Role) -> None:
    user = world.trader if role is Role.TRADER else await api.user(role)
    response = await api.client.post(
        f"/api/v1/accounts/{world.account_id}/deposits",
        json={"amount": "1.00"},
        headers=user.headers,
    )
    assert_problem(response, 403, "FORBIDDEN")


async def test_deposit_needs_a_token(api: Api, world: World) -> None:
    response = await api.client.post(
        f"/api/v1/accounts/{world.account_id}/deposits", json={"amount": "1.00"}
    )
    assert_problem(response, 401, "TOKEN_MISSING")


@pytest.mark.parametrize(
    ("amount", "status", "code"),
    [
        ("abc", 400, "VALIDATION_ERROR"),
        (10, 400, "VALIDATION_ERROR"),
        ("1e5", 400, "VALIDATION_ERROR"),
        ("NaN", 400, "VALIDATION_ERROR"),
        ("-5.00", 422, "INVALID_AMOUNT"),
        ("0", 422, "INVALID_AMOUNT"),
        ("0.001", 422, "PRECISION_EXCEEDED"),
    ],
)
async def test_deposit_amount_errors(
    api: Api, world: World, amount: Any, status: int, code: str
) -> None:
    response = await api.client.post(
        f"/api/v1/accounts/{world.account_id}/deposits",
        json={"amount": amount},
        headers=world.admin.headers,
    )
    problem = assert_problem(response, status, code)
    if status == 400:
        assert problem["errors"], problem


async def test_deposit_to_an_unknown_account_is_404(api: Api, world: World) -> None:
    response = await api.client.post(
        "/api/v1/accounts/00000000-0000-4000-8000-000000000000/deposits",
        json={"amount": "1.00"},
        headers=world.admin.headers,
    )
    assert_problem(response, 404, "ACCOUNT_NOT_FOUND")


async def test_deposit_with_a_bad_path_id_is_a_400(api: Api, world: World) -> None:
    response = await api.client.post(
        "/api/v1/accounts/not-a-uuid/deposits", json={"amount": "1.00"}, headers=world.admin.headers
    )
    assert response.status_code in (400, 404), response.text
    assert response.headers["content-type"].startswith("application/problem+json")


# Idempotency --------------------------------------------------------------------


async def test_idempotent_deposit_replays_the_first_answer_and_appends_once(
    api: Api, world: World
) -> None:
    before = await _stream_event_count(api, world.account_id)
    headers = {**world.admin.headers, "Idempotency-Key": f"dep-{secrets.token_hex(4)}"}
    url = f"/api/v1/accounts/{world.account_id}/deposits"
    first = await api.client.post(url, json={"amount": "5.00"}, headers=headers)
    again = await api.client.post(url, json={"amount": "5.00"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await _stream_event_count(api, world.account_id) == before + 1

    other = await api.client.post(url, json={"amount": "6.00"}, headers=headers)
    assert_problem(other, 409, "IDEMPOTENCY_KEY_REUSED")


async def test_idempotency_keys_are_per_user(api: Api, world: World) -> None:
    key = f"shared-{secrets.token_hex(4)}"
    other_admin = await api.user(Role.ADMIN)
    url = f"/api/v1/accounts/{world.account_id}/deposits"
    first = await api.client.post(
        url, json={"amount": "1.00"}, headers={**world.admin.headers, "Idempotency-Key": key}
    )
    second = await api.client.post(
        url, json={"amount": "2.00"}, headers={**other_admin.headers, "Idempotency-Key": key}
    )
    assert first.status_code == second.status_code == 201
    assert second.json()["amount"] == "2.00"


async def test_a_malformed_idempotency_key_is_a_400(api: Api, world: World) -> None:
    response = await api.client.post(
        f"/api/v1/accounts/{world.account_id}/deposits",
        json={"amount": "1.00"},
        headers={**world.admin.headers, "Idempotency-Key": "has spaces"},
    )
    assert_problem(response, 400, "INVALID_IDEMPOTENCY_KEY")


async def test_idempotent_order_replays_the_same_order(api: Api, world: World) -> None:
    headers = {**world.trader.headers, "Idempotency-Key": secrets.token_hex(8)}
    first = await api.client.post("/api/v1/orders", json=_order(world), headers=headers)
    again = await api.client.post("/api/v1/orders", json=_order(world), headers=headers)
    assert first.status_code == again.status_code == 202, first.text
    assert first.json() == again.json()
    assert await _stream_event_count(api, first.json()["order_id"]) == 2  # placed, accepted
    changed = await api.client.post(
        "/api/v1/orders", json=_order(world, quantity="11"), headers=headers
    )
    assert_problem(changed, 409, "IDEMPOTENCY_KEY_REUSED")


async def test_a_retry_after_the_stored_answer_was_deleted_still_appends_nothing(
    api: Api, world: World
) -> None:
    """Housekeeping deletes answers past their retention; the log keeps the key."""
    key = secrets.token_hex(8)
    headers = {**world.trader.headers, "Idempotency-Key": key}
    first = await api.client.post("/api/v1/orders", json=_order(world), headers=headers)
    assert first.status_code == 202, first.text
    assert api.settings.database_url is not None
    connection = await asyncpg.connect(api.settings.database_url)
    try:
        deleted = await connection.execute(
            "DELETE FROM api.idempotent_responses WHERE user_id = $1::uuid AND key = $2",
            world.trader.user_id,
            key,
        )
    finally:
        await connection.close()
    assert deleted == "DELETE 1"
    again = await api.client.post("/api/v1/orders", json=_order(world), headers=headers)
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert await _stream_event_count(api, first.json()["order_id"]) == 2  # placed, accepted
    changed = await api.client.post(
        "/api/v1/orders", json=_order(world, quantity="11"), headers=headers
    )
    assert_problem(changed, 409, "IDEMPOTENCY_KEY_REUSED")


# Instruments and strategies -------------------------------------------------------


async def test_listing_a_taken_symbol_is_a_conflict(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    body = {
        "symbol": f"D{secrets.token_hex(3).upper()}",
        "currency": "USD",
        "tick_size": "0.01",
        "lot_size": "1",
        "price_precision": 2,
        "quantity_precision": 0,
    }
    first = await api.client.post("/api/v1/instruments", json=body, headers=admin.headers)
    assert first.status_code == 201, first.text
    again = await api.client.post("/api/v1/instruments", json=body, headers=admin.headers)
    assert_problem(again, 409, "SYMBOL_TAKEN")


async def test_an_inconsistent_instrument_is_refused(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    body = {
        "symbol": f"B{secrets.token_hex(3).upper()}",
        "currency": "USD",
        "tick_size": "0.001",
        "lot_size": "1",
        "price_precision": 2,
        "quantity_precision": 0,
    }
    response = await api.client.post("/api/v1/instruments", json=body, headers=admin.headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in ("INVALID_INSTRUMENT", "PRECISION_EXCEEDED")


@pytest.mark.parametrize("role", [Role.TRADER, *OTHER_ROLES])
async def test_instruments_and_strategies_are_for_admins(api: Api, role: Role) -> None:
    user = await api.user(role)
    listed = await api.client.post(
        "/api/v1/instruments",
        json={
            "symbol": "XYZ",
            "currency": "USD",
            "tick_size": "0.01",
            "lot_size": "1",
            "price_precision": 2,
            "quantity_precision": 0,
        },
        headers=user.headers,
    )
    assert_problem(listed, 403, "FORBIDDEN")
    created = await api.client.post("/api/v1/strategies", json={"name": "s"}, headers=user.headers)
    assert_problem(created, 403, "FORBIDDEN")


async def test_strategy_parameters_are_validated(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    response = await api.client.post(
        "/api/v1/strategies",
        json={"name": "s", "parameters": {"nested": {"a": 1}}},
        headers=admin.headers,
    )
    assert_problem(response, 400, "VALIDATION_ERROR")


async def test_activating_an_active_strategy_is_a_conflict(api: Api, world: World) -> None:
    response = await api.client.post(
        f"/api/v1/strategies/{world.strategy_id}/activate", headers=world.admin.headers
    )
    assert_problem(response, 409, "INVALID_STATE_TRANSITION")


# Signals ------------------------------------------------------------------------


def _signal(world: World, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "strategy_id": world.strategy_id,
        "instrument_id": world.instrument_id,
        "action": "BUY",
        "strength": "0.75",
        "reasons": ["crossover"],
        "indicators": {"sma_20": "101.5"},
    }
    body.update(changes)
    return body


async def test_the_strategy_owner_emits_a_signal(api: Api, world: World) -> None:
    response = await api.client.post(
        "/api/v1/signals", json=_signal(world), headers=world.trader.headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["signal_id"]


async def test_another_trader_cannot_emit_for_the_strategy(api: Api, world: World) -> None:
    other = await api.user(Role.TRADER)
    response = await api.client.post("/api/v1/signals", json=_signal(world), headers=other.headers)
    assert_problem(response, 403, "NOT_OWNER")


@pytest.mark.parametrize("role", [Role.ADMIN, *OTHER_ROLES])
async def test_signals_are_for_traders(api: Api, world: World, role: Role) -> None:
    user = world.admin if role is Role.ADMIN else await api.user(role)
    response = await api.client.post("/api/v1/signals", json=_signal(world), headers=user.headers)
    assert_problem(response, 403, "FORBIDDEN")


@pytest.mark.parametrize(
    ("changes", "status", "code"),
    [
        ({"action": "maybe"}, 400, "VALIDATION_ERROR"),
        ({"strength": "1.5"}, 422, "INVALID_SIGNAL"),
        ({"indicators": {"Bad Name": "1"}}, 400, "VALIDATION_ERROR"),
        ({"strategy_id": "00000000-0000-4000-8000-000000000001"}, 404, "STRATEGY_NOT_FOUND"),
    ],
)
async def test_signal_errors(
    api: Api, world: World, changes: dict[str, Any], status: int, code: str
) -> None:
    response = await api.client.post(
        "/api/v1/signals", json=_signal(world, **changes), headers=world.trader.headers
    )
    assert_problem(response, status, code)


async def test_an_inactive_strategy_cannot_emit(api: Api, world: World) -> None:
    off = await api.client.post(
        f"/api/v1/strategies/{world.strategy_id}/deactivate", headers=world.admin.headers
    )
    assert off.status_code == 200, off.text
    response = await api.client.post(
        "/api/v1/signals", json=_signal(world), headers=world.trader.headers
    )
    assert_problem(response, 409, "STRATEGY_INACTIVE")


# Orders -------------------------------------------------------------------------


async def test_place_fill_and_cancel(api: Api, world: World) -> None:
    placed = await api.client.post(
        "/api/v1/orders", json=_order(world), headers=world.trader.headers
    )
    assert placed.status_code == 202, placed.text
    assert placed.json()["status"] == "accepted"
    order_id = placed.json()["order_id"]

    execution = await api.user(Role.EXECUTION)
    fill = {
        "fill_id": "f-1",
        "quantity": "4",
        "price": "99.50",
        "fee": "0.10",
        "venue": "XNAS",
        "executed_at": datetime.now(UTC).isoformat(),
    }
    filled = await api.client.post(
        f"/api/v1/orders/{order_id}/fills", json=fill, headers=execution.headers
    )
    assert filled.status_code == 201, filled.text
    assert filled.json()["status"] == "partially_filled"
    # The same fill id again changes nothing.
    repeated = await api.client.post(
        f"/api/v1/orders/{order_id}/fills", json=fill, headers=execution.headers
    )
    assert repeated.status_code == 201, repeated.text
    assert repeated.json()["consistency_token"] is None

    cancelled = await api.client.post(
        f"/api/v1/orders/{order_id}/cancel", json={"reason": "done"}, headers=world.trader.headers
    )
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = await api.client.post(f"/api/v1/orders/{order_id}/cancel", headers=world.trader.headers)
    assert_problem(again, 409, "INVALID_STATE_TRANSITION")


async def test_an_order_over_the_cash_is_recorded_as_rejected(api: Api) -> None:
    world = await _world(api, funds="10.00")
    response = await api.client.post(
        "/api/v1/orders", json=_order(world), headers=world.trader.headers
    )
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "rejected"
    assert response.json()["reason_code"] == "INSUFFICIENT_FUNDS"


async def test_a_trader_cannot_use_another_traders_account_or_order(api: Api, world: World) -> None:
    placed = await api.client.post(
        "/api/v1/orders", json=_order(world), headers=world.trader.headers
    )
    order_id = placed.json()["order_id"]
    other = await api.user(Role.TRADER)
    response = await api.client.post("/api/v1/orders", json=_order(world), headers=other.headers)
    assert_problem(response, 403, "NOT_OWNER")
    cancel = await api.client.post(f"/api/v1/orders/{order_id}/cancel", headers=other.headers)
    assert_problem(cancel, 403, "NOT_OWNER")


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "loaded"])
async def test_ownership_holds_whether_the_api_has_the_streams_cached_or_not(
    api: Api, world: World, cached: bool
) -> None:
    placed = await api.client.post(
        "/api/v1/orders", json=_order(world), headers=world.trader.headers
    )
    order_id = placed.json()["order_id"]
    other = await api.user(Role.TRADER)
    ledger: Ledger = api.client.app.state.ledger
    streams = [UUID(order_id), UUID(world.account_id)]
    for user, refused in ((other, True), (world.trader, False)):
        if not cached:
            ledger.repository.cache.forget(streams)
        assert (ledger.repository.cache.get(streams[1]) is not None) == cached
        response = await api.client.post("/api/v1/orders", json=_order(world), headers=user.headers)
        if not cached:
            ledger.repository.cache.forget(streams)
        cancel = await api.client.post(f"/api/v1/orders/{order_id}/cancel", headers=user.headers)
        if refused:
            assert_problem(response, 403, "NOT_OWNER")
            assert_problem(cancel, 403, "NOT_OWNER")
        else:
            assert response.status_code == 202, response.text
            assert cancel.status_code == 202, cancel.text


@pytest.mark.parametrize("role", [Role.ADMIN, *OTHER_ROLES])
async def test_placing_orders_is_for_traders(api: Api, world: World, role: Role) -> None:
    user = world.admin if role is Role.ADMIN else await api.user(role)
    response = await api.client.post("/api/v1/orders", json=_order(world), headers=user.headers)
    assert_problem(response, 403, "FORBIDDEN")


@pytest.mark.parametrize("role", [Role.TRADER, Role.ADMIN, Role.ANALYST, Role.AUDITOR])
async def test_fills_are_for_the_execution_role(api: Api, world: World, role: Role) -> None:
    placed = await api.client.post(
        "/api/v1/orders", json=_order(world), headers=world.trader.headers
    )
    order_id = placed.json()["order_id"]
    user = {Role.TRADER: world.trader, Role.ADMIN: world.admin}.get(role) or await api.user(role)
    response = await api.client.post(
        f"/api/v1/orders/{order_id}/fills",
        json={
            "fill_id": "f",
            "quantity": "1",
            "price": "100.00",
            "venue": "X",
            "executed_at": datetime.now(UTC).isoformat(),
        },
        headers=user.headers,
    )
    assert_problem(response, 403, "FORBIDDEN")


@pytest.mark.parametrize(
    ("changes", "status", "code"),
    [
        ({"side": "sideways"}, 400, "VALIDATION_ERROR"),
        ({"quantity": "ten"}, 400, "VALIDATION_ERROR"),
        ({"surprise": True}, 400, "VALIDATION_ERROR"),
        ({"quantity": "0"}, 422, "INVALID_AMOUNT"),
        ({"quantity": "1.5"}, 422, "PRECISION_EXCEEDED"),
        ({"limit_price": "100.005"}, 422, "PRECISION_EXCEEDED"),
        ({"limit_price": "100.03"}, 422, "TICK_SIZE_VIOLATION"),
        ({"instrument_id": "00000000-0000-4000-8000-000000000002"}, 404, "INSTRUMENT_NOT_FOUND"),
    ],
)
async def test_order_errors(
    api: Api, world: World, changes: dict[str, Any], status: int, code: str
) -> None:
    response = await api.client.post(
        "/api/v1/orders", json=_order(world, **changes), headers=world.trader.headers
    )
    assert_problem(response, status, code)


async def test_a_fill_with_a_naive_time_is_a_400(api: Api, world: World) -> None:
    placed = await api.client.post(
        "/api/v1/orders", json=_order(world), headers=world.trader.headers
    )
    execution = await api.user(Role.EXECUTION)
    response = await api.client.post(
        f"/api/v1/orders/{placed.json()['order_id']}/fills",
        json={
            "fill_id": "f",
            "quantity": "1",
            "price": "100.00",
            "venue": "X",
            "executed_at": "2024-01-01T00:00:00",
        },
        headers=execution.headers,
    )
    assert_problem(response, 400, "VALIDATION_ERROR")


async def test_cancelling_an_unknown_order_is_404(api: Api, world: World) -> None:
    response = await api.client.post(
        "/api/v1/orders/00000000-0000-4000-8000-000000000003/cancel", headers=world.trader.headers
    )
    assert_problem(response, 404, "ORDER_NOT_FOUND")
