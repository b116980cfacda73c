"""GET /audit/verify and /audit/digests: chains verified by range, breaks found where they are.

The tests here have a database of their own, and those that alter stored bytes (as a
superuser with triggers off, as test_tamper.py does) one more, so that no other test ever
verifies a range they broke.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from ledger.domain.user import Role
from ledger.settings import Settings
from tests.conftest import Databases
from tests.e2e.conftest import JWT_SECRET, Api, User, assert_problem
from tests.sequencing import sequence_all

VERIFY = "/api/v1/audit/verify"
DIGESTS = "/api/v1/audit/digests"
AUDIT_ROLES = [Role.AUDITOR, Role.ANALYST]
DIGEST_EVERY = 4
A_STREAM = "00000000-0000-4000-8000-000000000001"


async def _app(databases: Databases, nats_url: str, label: str) -> AsyncIterator[Api]:
    url = await databases.create(label)
    settings = Settings(database_url=url, nats_url=nats_url, jwt_secret=JWT_SECRET)
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield Api(client, settings)


@pytest.fixture(scope="module")
async def audit_api(databases: Databases, nats_url: str) -> AsyncIterator[Api]:
    async for api in _app(databases, nats_url, "audit"):
        yield api


@pytest.fixture(scope="module")
async def tampered_api(databases: Databases, nats_url: str) -> AsyncIterator[Api]:
    async for api in _app(databases, nats_url, "tampered"):
        yield api


_USERS: dict[tuple[int, Role], User] = {}


async def user_of(api: Api, role: Role) -> User:
    """One signed-in user per role and app: signing in costs an argon2 hash."""
    key = (id(api), role)
    if key not in _USERS:
        _USERS[key] = await api.user(role)
    return _USERS[key]


async def account_with_deposits(api: Api, deposits: int) -> str:
    _, account_id = await api.account_with_deposits(deposits)
    return account_id


async def sequenced(api: Api) -> int:
    assert api.settings.database_url is not None
    return await sequence_all(api.settings.database_url, digest_every=DIGEST_EVERY)


async def sequences_of(api: Api, stream_id: str) -> dict[int, int]:
    """version -> sequence of a stream's numbered events."""
    assert api.settings.database_url is not None
    connection = await asyncpg.connect(api.settings.database_url)
    try:
        rows = await connection.fetch(
            "SELECT e.originator_version, s.sequence FROM ledger.events e "
            "JOIN ledger.sequence s ON s.position = e.notification_id "
            "WHERE e.originator_id = $1",
            stream_id,
        )
    finally:
        await connection.close()
    return {row[0]: row[1] for row in rows}


async def tamper(api: Api, statement: str, *arguments: Any) -> None:
    """Change stored rows as a superuser can: triggers off for the transaction."""
    assert api.settings.database_url is not None
    connection = await asyncpg.connect(api.settings.database_url)
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            await connection.execute(statement, *arguments)
    finally:
        await connection.close()


async def verify(api: Api, reader: User, **params: Any) -> dict[str, Any]:
    response = await api.client.get(VERIFY, params=params, headers=reader.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# Untouched chains ---------------------------------------------------------------


@pytest.mark.parametrize("role", AUDIT_ROLES)
async def test_a_stream_verifies_page_by_page(audit_api: Api, role: Role) -> None:
    account_id = await account_with_deposits(audit_api, 4)
    reader = await user_of(audit_api, role)
    first = await verify(audit_api, reader, stream_id=account_id, limit=2)
    assert first["ok"] is True
    assert first["log"] is None  # A stream alone, unless sequences are asked for.
    stream = first["stream"]
    assert (stream["from_version"], stream["checked"], stream["head_version"]) == (1, 2, 5)
    assert stream["next_from_version"] == 3
    second = await verify(audit_api, reader, stream_id=account_id, from_version=3, limit=2)
    assert second["stream"]["checked"] == 2
    last = await verify(audit_api, reader, stream_id=account_id, from_version=5, limit=2)
    assert (last["stream"]["checked"], last["stream"]["next_from_version"]) == (1, None)
    beyond = await verify(audit_api, reader, stream_id=account_id, from_version=9)
    assert (beyond["ok"], beyond["stream"]["checked"]) == (True, 0)


@pytest.mark.parametrize("role", AUDIT_ROLES)
async def test_the_global_chain_verifies_range_by_range(audit_api: Api, role: Role) -> None:
    await account_with_deposits(audit_api, 3)
    head = await sequenced(audit_api)
    reader = await user_of(audit_api, role)
    whole = await verify(audit_api, reader)  # No stream named: the global chain from 1.
    assert whole["ok"] is True
    assert whole["stream"] is None
    assert whole["log"]["head_sequence"] >= head
    checked, start, pages = 0, 1, 0
    while start is not None and start <= head:
        page = await verify(audit_api, reader, from_sequence=start, to_sequence=head, limit=3)
        assert page["ok"] is True, page
        assert page["log"]["from_sequence"] == start
        checked += page["log"]["checked"]
        start, pages = page["log"]["next_from_sequence"], pages + 1
    assert checked == head
    assert pages == -(-head // 3)


async def test_a_stream_and_a_range_at_once(audit_api: Api) -> None:
    account_id = await account_with_deposits(audit_api, 1)
    head = await sequenced(audit_api)
    reader = await user_of(audit_api, Role.AUDITOR)
    both = await verify(audit_api, reader, stream_id=account_id, from_sequence=head)
    assert both["ok"] is True
    assert both["stream"]["checked"] == 2
    assert (both["log"]["from_sequence"], both["log"]["to_sequence"]) == (head, head)


async def test_digests_are_paged_and_each_is_recomputed_from_the_events(audit_api: Api) -> None:
    await account_with_deposits(audit_api, 4)
    head = await sequenced(audit_api)
    auditor = await user_of(audit_api, Role.AUDITOR)
    digests = await audit_api.pages(DIGESTS, auditor, "digests", limit=2)
    assert len(digests) == head // DIGEST_EVERY
    assert [d["last_sequence"] for d in digests] == [
        DIGEST_EVERY * n for n in range(1, len(digests) + 1)
    ]
    # An auditor who kept digest n - 1 recomputes digest n from the events alone.
    previous, digest = digests[-2], digests[-1]
    checked = await verify(
        audit_api,
        auditor,
        from_sequence=digest["first_sequence"],
        to_sequence=digest["last_sequence"],
        anchor=previous["global_hash"],
    )
    assert checked["ok"] is True
    assert checked["log"]["global_hash"] == digest["global_hash"]
    # Another anchor does not lead to the digest: the chain says so at its first sequence.
    wrong = await verify(
        audit_api,
        auditor,
        from_sequence=digest["first_sequence"],
        to_sequence=digest["last_sequence"],
        anchor="ab" * 32,
    )
    assert wrong["ok"] is False
    assert wrong["log"]["broken"]["sequence"] == digest["first_sequence"]


@pytest.mark.parametrize("role", [Role.ADMIN, Role.TRADER, Role.EXECUTION])
async def test_other_roles_cannot_verify(audit_api: Api, role: Role) -> None:
    user = await user_of(audit_api, role)
    for url in (VERIFY, DIGESTS):
        assert_problem(await audit_api.client.get(url, headers=user.headers), 403, "FORBIDDEN")
        assert_problem(await audit_api.client.get(url), 401, "TOKEN_MISSING")


@pytest.mark.parametrize(
    ("url", "params", "code"),
    [
        (VERIFY, {"from_sequence": 5, "to_sequence": 4}, "INVALID_RANGE"),
        (VERIFY, {"stream_id": A_STREAM, "anchor": "ab" * 32}, "INVALID_RANGE"),
        (VERIFY, {"anchor": "xyz"}, "VALIDATION_ERROR"),
        (VERIFY, {"anchor": "AB" * 32}, "VALIDATION_ERROR"),
        (VERIFY, {"limit": 0}, "VALIDATION_ERROR"),
        (VERIFY, {"limit": 10_001}, "VALIDATION_ERROR"),
        (VERIFY, {"stream_id": A_STREAM, "from_version": 0}, "VALIDATION_ERROR"),
        (VERIFY, {"from_sequence": 0}, "VALIDATION_ERROR"),
        (VERIFY, {"stream_id": "nope"}, "VALIDATION_ERROR"),
        (DIGESTS, {"cursor": "garbage!"}, "INVALID_CURSOR"),
        (DIGESTS, {"cursor": "czox"}, "INVALID_CURSOR"),  # A log cursor ("s:1") here.
        (DIGESTS, {"limit": 501}, "VALIDATION_ERROR"),
    ],
)
async def test_bad_input_is_a_400(
    audit_api: Api, url: str, params: dict[str, Any], code: str
) -> None:
    auditor = await user_of(audit_api, Role.AUDITOR)
    response = await audit_api.client.get(url, params=params, headers=auditor.headers)
    assert_problem(response, 400, code)


async def test_an_unknown_stream_is_404(audit_api: Api) -> None:
    auditor = await user_of(audit_api, Role.AUDITOR)
    response = await audit_api.client.get(
        VERIFY,
        params={"stream_id": "00000000-0000-4000-8000-000000000009"},
        headers=auditor.headers,
    )
    assert_problem(response, 404, "STREAM_NOT_FOUND")


# Altered behind the triggers' back -------------------------------------------------
# Each test alters rows of its own events; the digest test runs first, before any
# other alteration could sit just before its range.


async def test_a_changed_digest_is_found_at_its_last_sequence(tampered_api: Api) -> None:
    api = tampered_api
    await account_with_deposits(api, 4)
    head = await sequenced(api)
    last = head - head % DIGEST_EVERY
    await tamper(
        api,
        "UPDATE ledger.digests SET global_hash = sha256(global_hash) WHERE last_sequence = $1",
        last,
    )
    auditor = await user_of(api, Role.AUDITOR)
    found = await verify(api, auditor, from_sequence=last - DIGEST_EVERY + 1, to_sequence=last)
    assert found["log"]["broken"]["sequence"] == last
    assert "digest" in found["log"]["broken"]["reason"]


@pytest.mark.parametrize(
    ("column", "change"),
    [
        ("state", "overlay(state placing '7'::bytea from 11 for 1)"),
        ("actor", "'someone else'"),
        ("recorded_at", "recorded_at + interval '1 microsecond'"),
        ("hash", "overlay(hash placing '\\x00'::bytea from 32 for 1)"),
    ],
)
async def test_a_changed_byte_is_found_at_its_version_and_sequence(
    tampered_api: Api, column: str, change: str
) -> None:
    api = tampered_api
    account_id = await account_with_deposits(api, 3)
    await sequenced(api)
    numbers = await sequences_of(api, account_id)
    await tamper(
        api,
        f"UPDATE ledger.events SET {column} = {change} "
        "WHERE originator_id = $1 AND originator_version = 3",
        account_id,
    )
    auditor = await user_of(api, Role.AUDITOR)
    found = await verify(
        api,
        auditor,
        stream_id=account_id,
        from_sequence=numbers[1],
        to_sequence=numbers[4],
    )
    assert found["ok"] is False
    stream = found["stream"]
    assert (stream["ok"], stream["checked"]) == (False, 2)
    assert stream["broken"]["version"] == 3
    assert "content does not match its hash" in stream["broken"]["reason"]
    log = found["log"]
    assert log["broken"]["sequence"] == numbers[3]
    assert log["checked"] == numbers[3] - numbers[1]
    assert log["next_from_sequence"] is None
    # A range that ends before the change still checks out.
    before = await verify(api, auditor, from_sequence=numbers[1], to_sequence=numbers[3] - 1)
    assert before["ok"] is True


async def test_a_changed_global_hash_is_found_at_its_sequence(tampered_api: Api) -> None:
    api = tampered_api
    account_id = await account_with_deposits(api, 2)
    await sequenced(api)
    numbers = await sequences_of(api, account_id)
    await tamper(
        api,
        "UPDATE ledger.sequence SET global_hash = sha256(global_hash) WHERE sequence = $1",
        numbers[2],
    )
    auditor = await user_of(api, Role.AUDITOR)
    found = await verify(api, auditor, from_sequence=numbers[1], to_sequence=numbers[3])
    assert found["log"]["broken"]["sequence"] == numbers[2]
    assert "global_hash" in found["log"]["broken"]["reason"]
    # The stream's own chain is intact: only the global order's record was touched.
    assert (await verify(api, auditor, stream_id=account_id))["ok"] is True


async def test_a_deleted_sequence_row_is_found_missing(tampered_api: Api) -> None:
    api = tampered_api
    account_id = await account_with_deposits(api, 2)
    await sequenced(api)
    numbers = await sequences_of(api, account_id)
    await tamper(api, "DELETE FROM ledger.sequence WHERE sequence = $1", numbers[2])
    auditor = await user_of(api, Role.AUDITOR)
    found = await verify(api, auditor, from_sequence=numbers[1], to_sequence=numbers[3])
    assert found["log"]["broken"]["sequence"] == numbers[2]
    assert "missing" in found["log"]["broken"]["reason"]
