"""Append-only enforcement and the per-stream hash chain catching edits behind its back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest

from ledger.store import EventStore, verify_stream
from tests.integration.events import new_stream, noted


@pytest.fixture
async def superuser(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def three_events(store: EventStore) -> UUID:
    stream = new_stream()
    await store.append([noted(stream, n) for n in range(3)], {stream: 0})
    return stream


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger.events SET topic = 'x' WHERE originator_id = $1",
        "DELETE FROM ledger.events WHERE originator_id = $1",
    ],
    ids=["update", "delete"],
)
async def test_update_and_delete_are_refused(
    store: EventStore, superuser: asyncpg.Connection, statement: str
) -> None:
    stream = await three_events(store)
    with pytest.raises(asyncpg.PostgresError, match="append-only") as raised:
        await superuser.execute(statement, stream)
    assert raised.value.sqlstate == "LG002"
    assert len(await store.read_stream(stream)) == 3


async def test_truncate_is_refused(store: EventStore, superuser: asyncpg.Connection) -> None:
    await three_events(store)
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await superuser.execute("TRUNCATE ledger.events CASCADE")


async def test_application_role_may_only_insert_and_select(
    store: EventStore, superuser: asyncpg.Connection
) -> None:
    stream = await three_events(store)
    async with superuser.transaction():
        await superuser.execute("SET LOCAL ROLE ledger_app")
        assert (
            await superuser.fetchval(
                "SELECT count(*) FROM ledger.events WHERE originator_id = $1", stream
            )
            == 3
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await superuser.execute("ALTER TABLE ledger.events DISABLE TRIGGER USER")


async def test_verify_stream_passes_on_an_untouched_stream(store: EventStore) -> None:
    stream = await three_events(store)
    result = await verify_stream(store, stream)
    assert result.ok
    assert result.checked == 3


@pytest.mark.parametrize(
    ("column", "change"),
    [
        ("state", "overlay(state placing '7'::bytea from 11 for 1)"),
        ("actor", "'someone else'"),
        ("recorded_at", "recorded_at + interval '1 microsecond'"),
        ("topic", "topic || 'x'"),
    ],
)
async def test_verify_stream_finds_a_changed_byte_at_its_exact_version(
    store: EventStore, superuser: asyncpg.Connection, column: str, change: str
) -> None:
    stream = await three_events(store)
    async with superuser.transaction():
        # A superuser can switch triggers off; the chain is what still tells.
        await superuser.execute("SET LOCAL session_replication_role = replica")
        await superuser.execute(
            f"UPDATE ledger.events SET {column} = {change} "
            "WHERE originator_id = $1 AND originator_version = 2",
            stream,
        )
    result = await verify_stream(store, stream)
    assert not result.ok
    assert result.broken is not None
    assert result.broken.version == 2
    assert result.checked == 1
    assert "content" in result.broken.reason
