"""Audit reads: a stream's events and the global log by sequence, for auditors and analysts."""

from __future__ import annotations

import itertools
import json
import secrets
from typing import Any

import asyncpg
import pytest

from api import events
from ledger import sequencer
from ledger.domain.user import Role
from tests.e2e.conftest import Api, User, assert_problem

AUDIT_ROLES = [Role.AUDITOR, Role.ANALYST]


async def _sequence_all(database_url: str) -> None:
    """Do the relay leader's numbering, as it would, until every committed event has one."""
    connection = await asyncpg.connect(database_url)
    try:
        while True:
            cursor = await sequencer.load_cursor(connection)
            pending = await sequencer.read_unsequenced(connection, cursor, limit=1_000)
            if not pending:
                return
            await sequencer.record(
                connection, sequencer.assign(cursor, pending, digest_every=1_000)
            )
    finally:
        await connection.close()


@pytest.mark.parametrize("role", AUDIT_ROLES)
async def test_a_stream_read_page_by_page(api: Api, role: Role) -> None:
    _, account_id = await api.account_with_deposits(4)
    reader = await api.user(role)
    seen = await api.pages(f"/api/v1/streams/{account_id}/events", reader, "events", limit=2)
    assert [event["version"] for event in seen] == [1, 2, 3, 4, 5]
    assert seen[0]["type"].endswith(":AccountOpened")
    assert seen[1]["data"]["amount"] == "1.00"
    # Each event links to the one before it.
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(seen))


async def test_password_hashes_are_redacted(api: Api) -> None:
    trader = await api.user(Role.TRADER)
    auditor = await api.user(Role.AUDITOR)
    page = await api.client.get(f"/api/v1/streams/{trader.user_id}/events", headers=auditor.headers)
    assert page.status_code == 200, page.text
    registered = page.json()["events"][0]["data"]
    assert registered["password_hash"] == "[redacted]"
    assert "argon2" not in page.text


async def test_an_unknown_stream_is_404(api: Api) -> None:
    auditor = await api.user(Role.AUDITOR)
    response = await api.client.get(
        "/api/v1/streams/00000000-0000-4000-8000-000000000009/events", headers=auditor.headers
    )
    assert_problem(response, 404, "STREAM_NOT_FOUND")


@pytest.mark.parametrize("role", [Role.ADMIN, Role.TRADER, Role.EXECUTION])
async def test_other_roles_cannot_read_the_log(api: Api, role: Role) -> None:
    user = await api.user(role)
    for url in ("/api/v1/events", f"/api/v1/streams/{user.user_id}/events"):
        response = await api.client.get(url, headers=user.headers)
        assert_problem(response, 403, "FORBIDDEN")


async def test_the_log_needs_a_token(api: Api) -> None:
    assert_problem(await api.client.get("/api/v1/events"), 401, "TOKEN_MISSING")


@pytest.mark.parametrize("role", AUDIT_ROLES)
async def test_the_global_log_is_followed_by_sequence_without_gaps(api: Api, role: Role) -> None:
    _, account_id = await api.account_with_deposits(3)
    reader = await api.user(role)
    assert api.settings.database_url is not None
    await _sequence_all(api.settings.database_url)
    logged = await api.pages("/api/v1/events", reader, "events", limit=500)
    sequences = [event["sequence"] for event in logged]
    assert sequences == list(range(1, len(sequences) + 1))

    filtered = await api.client.get(
        "/api/v1/events", params={"stream_id": account_id}, headers=reader.headers
    )
    assert [event["version"] for event in filtered.json()["events"]] == [1, 2, 3, 4]
    by_type = await api.client.get(
        "/api/v1/events",
        params={"stream_id": account_id, "type": "ledger.domain.account:CashDeposited"},
        headers=reader.headers,
    )
    assert len(by_type.json()["events"]) == 3


async def test_events_carry_the_request_id_as_correlation(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    trader = await api.user(Role.TRADER)
    request_id = secrets.token_hex(16)
    opened = await api.client.post(
        "/api/v1/accounts",
        json={"user_id": trader.user_id, "currency": "USD"},
        headers={**admin.headers, "X-Request-ID": request_id},
    )
    assert opened.status_code == 201
    auditor = await api.user(Role.AUDITOR)
    page = await api.client.get(
        f"/api/v1/streams/{opened.json()['account_id']}/events", headers=auditor.headers
    )
    event = page.json()["events"][0]
    assert event["correlation_id"].replace("-", "") == request_id
    assert event["actor"] == admin.user_id


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": 501}, "VALIDATION_ERROR"),
        ({"limit": 0}, "VALIDATION_ERROR"),
        ({"cursor": "garbage!"}, "INVALID_CURSOR"),
        ({"cursor": "djox"}, "INVALID_CURSOR"),  # a stream cursor ("v:1") on the global log
        ({"correlation_id": "nope"}, "VALIDATION_ERROR"),
    ],
)
async def test_bad_paging_is_a_400(api: Api, params: dict[str, Any], code: str) -> None:
    auditor = await api.user(Role.AUDITOR)
    response = await api.client.get("/api/v1/events", params=params, headers=auditor.headers)
    assert_problem(response, 400, code)


# Export ------------------------------------------------------------------------------


async def _export(api: Api, reader: User, **params: Any) -> tuple[list[dict[str, Any]], Any]:
    response = await api.client.get("/api/v1/events/export", params=params, headers=reader.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    return [json.loads(line) for line in lines], response.headers


@pytest.mark.parametrize("role", AUDIT_ROLES)
async def test_an_export_is_the_log_up_to_its_until_line_by_line(
    api: Api, role: Role, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.account_with_deposits(3)
    reader = await api.user(role)
    assert api.settings.database_url is not None
    await _sequence_all(api.settings.database_url)
    # Small windows: the export is stitched from many statements, none missing or repeated.
    monkeypatch.setattr(events, "EXPORT_WINDOW", 3)
    exported, headers = await _export(api, reader)
    paged = await api.pages("/api/v1/events", reader, "events", limit=500)
    head = paged[-1]["sequence"]
    assert headers["ledger-export-after"] == "0"
    assert headers["ledger-export-until"] == str(head)
    assert exported == paged
    assert [event["sequence"] for event in exported] == list(range(1, head + 1))


async def test_an_export_takes_a_range_and_filters(api: Api) -> None:
    _, account_id = await api.account_with_deposits(4)
    auditor = await api.user(Role.AUDITOR)
    assert api.settings.database_url is not None
    await _sequence_all(api.settings.database_url)
    everything, _ = await _export(api, auditor)
    head = everything[-1]["sequence"]
    ranged, headers = await _export(api, auditor, after=head - 5, until=head - 2)
    assert [event["sequence"] for event in ranged] == [head - 4, head - 3, head - 2]
    assert headers["ledger-export-until"] == str(head - 2)
    beyond, headers = await _export(api, auditor, after=head - 1, until=head + 1_000)
    assert [event["sequence"] for event in beyond] == [head]
    assert headers["ledger-export-until"] == str(head)
    nothing, _ = await _export(api, auditor, after=head)
    assert nothing == []
    one_stream, _ = await _export(api, auditor, stream_id=account_id)
    assert [event["version"] for event in one_stream] == [1, 2, 3, 4, 5]
    deposits, _ = await _export(
        api, auditor, stream_id=account_id, type="ledger.domain.account:CashDeposited"
    )
    assert [event["data"]["amount"] for event in deposits] == ["1.00", "2.00", "3.00", "4.00"]


async def test_an_export_redacts_password_hashes(api: Api) -> None:
    trader = await api.user(Role.TRADER)
    analyst = await api.user(Role.ANALYST)
    assert api.settings.database_url is not None
    await _sequence_all(api.settings.database_url)
    exported, _ = await _export(api, analyst, stream_id=trader.user_id)
    assert exported[0]["data"]["password_hash"] == "[redacted]"
    assert all("argon2" not in json.dumps(event) for event in exported)


@pytest.mark.parametrize("role", [Role.ADMIN, Role.TRADER, Role.EXECUTION])
async def test_other_roles_cannot_export_the_log(api: Api, role: Role) -> None:
    user = await api.user(role)
    response = await api.client.get("/api/v1/events/export", headers=user.headers)
    assert_problem(response, 403, "FORBIDDEN")
    assert_problem(await api.client.get("/api/v1/events/export"), 401, "TOKEN_MISSING")


@pytest.mark.parametrize("params", [{"after": -1}, {"until": 2**63}, {"after": "x"}])
async def test_a_bad_export_range_is_a_400(api: Api, params: dict[str, Any]) -> None:
    auditor = await api.user(Role.AUDITOR)
    response = await api.client.get("/api/v1/events/export", params=params, headers=auditor.headers)
    assert_problem(response, 400, "VALIDATION_ERROR")
