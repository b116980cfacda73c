"""GET /streams/{id}/state?as_of=: an aggregate folded from its events up to a version or time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from ledger.domain.user import Role
from tests.e2e.conftest import Api, User, assert_problem

AUDIT_ROLES = [Role.AUDITOR, Role.ANALYST]


async def account_with_deposits(api: Api, amounts: list[str]) -> str:
    _, account_id = await api.account_with_deposits(amounts)
    return account_id


async def state(api: Api, reader: User, stream_id: str, as_of: str | None) -> dict[str, Any]:
    params = {} if as_of is None else {"as_of": as_of}
    response = await api.client.get(
        f"/api/v1/streams/{stream_id}/state", params=params, headers=reader.headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def recorded_at(api: Api, reader: User, stream_id: str) -> list[datetime]:
    page = await api.client.get(f"/api/v1/streams/{stream_id}/events", headers=reader.headers)
    return [datetime.fromisoformat(event["recorded_at"]) for event in page.json()["events"]]


@pytest.mark.parametrize("role", AUDIT_ROLES)
async def test_an_account_as_of_each_version_and_time(api: Api, role: Role) -> None:
    account_id = await account_with_deposits(api, ["1.00", "2.00", "3.00"])
    reader = await api.user(role)

    now = await state(api, reader, account_id, None)
    assert (now["version"], now["head_version"], now["stream_type"]) == (4, 4, "account")
    assert now["state"]["available"] == "6.00"
    assert now["state"]["account_id"] == account_id

    second = await state(api, reader, account_id, "2")
    assert (second["version"], second["state"]["available"]) == (2, "1.00")
    beyond = await state(api, reader, account_id, "99")
    assert (beyond["version"], beyond["state"]["available"]) == (4, "6.00")

    times = await recorded_at(api, reader, account_id)
    third = await state(api, reader, account_id, times[2].isoformat())
    assert (third["version"], third["state"]["available"]) == (3, "3.00")
    assert datetime.fromisoformat(third["recorded_at"]) == times[2]
    # The same moment written with Z and another offset.
    zulu = times[2].isoformat().replace("+00:00", "Z")
    assert (await state(api, reader, account_id, zulu))["version"] == 3
    east = times[2].astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert (await state(api, reader, account_id, east))["version"] == 3

    before = await state(
        api, reader, account_id, (times[0] - timedelta(microseconds=1)).isoformat()
    )
    assert (before["version"], before["state"], before["recorded_at"]) == (0, None, None)
    assert before["head_version"] == 4


async def test_a_strategy_folds_with_its_own_aggregate(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    created = await api.client.post(
        "/api/v1/strategies", json={"name": "momentum"}, headers=admin.headers
    )
    assert created.status_code == 201, created.text
    strategy_id = created.json()["strategy_id"]
    activated = await api.client.post(
        f"/api/v1/strategies/{strategy_id}/activate", headers=admin.headers
    )
    assert activated.status_code == 200, activated.text
    analyst = await api.user(Role.ANALYST)
    first = await state(api, analyst, strategy_id, "1")
    assert (first["stream_type"], first["state"]["active"]) == ("strategy", False)
    assert (await state(api, analyst, strategy_id, None))["state"]["active"] is True


async def test_a_users_password_hash_is_redacted(api: Api) -> None:
    trader = await api.user(Role.TRADER)
    auditor = await api.user(Role.AUDITOR)
    response = await api.client.get(
        f"/api/v1/streams/{trader.user_id}/state", headers=auditor.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"]["password_hash"] == "[redacted]"
    assert "argon2" not in response.text


async def test_an_unknown_stream_is_404(api: Api) -> None:
    analyst = await api.user(Role.ANALYST)
    response = await api.client.get(
        "/api/v1/streams/00000000-0000-4000-8000-000000000009/state",
        params={"as_of": "1"},
        headers=analyst.headers,
    )
    assert_problem(response, 404, "STREAM_NOT_FOUND")


@pytest.mark.parametrize(
    ("as_of", "code"),
    [
        ("yesterday", "INVALID_AS_OF"),
        ("0", "INVALID_AS_OF"),
        ("-1", "INVALID_AS_OF"),
        ("2026-01-02T03:04:05", "INVALID_AS_OF"),  # No offset: which moment is it?
        ("2026-13-01T00:00:00Z", "INVALID_AS_OF"),
        ("٣", "INVALID_AS_OF"),  # A digit, but not an ASCII one.
        ("1\x00", "VALIDATION_ERROR"),
        ("1" * 65, "VALIDATION_ERROR"),
    ],
)
async def test_a_bad_as_of_is_a_400(api: Api, as_of: str, code: str) -> None:
    analyst = await api.user(Role.ANALYST)
    response = await api.client.get(
        f"/api/v1/streams/{analyst.user_id}/state", params={"as_of": as_of}, headers=analyst.headers
    )
    assert_problem(response, 400, code)


@pytest.mark.parametrize("role", [Role.ADMIN, Role.TRADER, Role.EXECUTION])
async def test_other_roles_cannot_read_states(api: Api, role: Role) -> None:
    user = await api.user(role)
    url = f"/api/v1/streams/{user.user_id}/state"
    assert_problem(await api.client.get(url, headers=user.headers), 403, "FORBIDDEN")
    assert_problem(await api.client.get(url), 401, "TOKEN_MISSING")
