"""`ledger audit verify`: the whole log, range by range, and the first altered byte named."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ledger import audit
from ledger.cli import main
from ledger.store import EventStore
from tests.conftest import Databases
from tests.integration.events import new_stream, noted
from tests.sequencing import sequence_all


@pytest.fixture
async def audited(databases: Databases) -> str:
    """A database of its own (other tests alter the shared one) with three streams."""
    url = await databases.create("audit_verify")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        store = EventStore(pool)
        for _ in range(3):
            stream = new_stream()
            await store.append([noted(stream, n) for n in range(4)], {stream: 0})
    finally:
        await pool.close()
    await sequence_all(url, digest_every=5)
    return url


async def run(url: str, *extra: str) -> int:
    return await asyncio.to_thread(main, ["audit", "verify", "--database-url", url, *extra])


async def test_an_untouched_log_verifies(audited: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(audited) == 0
    out = capsys.readouterr().out
    assert "global chain: sequences 1..12 ok" in out
    assert "streams: 3 streams, 12 events ok" in out


async def test_a_changed_byte_is_named_by_sequence_then_by_stream_version(
    audited: str, capsys: pytest.CaptureFixture[str]
) -> None:
    connection = await asyncpg.connect(audited)
    try:
        stream_id, sequence = await connection.fetchrow(
            "SELECT e.originator_id, s.sequence FROM ledger.events e "
            "JOIN ledger.sequence s ON s.position = e.notification_id "
            "WHERE e.originator_version = 3 ORDER BY s.sequence LIMIT 1"
        )
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            await connection.execute(
                "UPDATE ledger.events SET state = overlay(state placing '9'::bytea from 11 for 1) "
                "WHERE originator_id = $1 AND originator_version = 3",
                stream_id,
            )
        assert await run(audited) == 1
        assert f"global chain: BROKEN at sequence {sequence}" in capsys.readouterr().out
        # Past that range the global chain holds; the stream walk still finds the change.
        streams = await audit.verify_streams(connection)
        assert (streams.stream_id, streams.broken and streams.broken.version) == (stream_id, 3)
        assert await run(audited, "--from-sequence", str(sequence + 1)) == 1
        out = capsys.readouterr().out
        assert f"stream {stream_id}: BROKEN at version 3" in out
    finally:
        await connection.close()


async def test_a_missing_version_is_named(audited: str) -> None:
    connection = await asyncpg.connect(audited)
    try:
        stream_id = await connection.fetchval(
            "SELECT originator_id FROM ledger.events ORDER BY originator_id LIMIT 1"
        )
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            # The sequence row goes first: it references the event.
            await connection.execute(
                "DELETE FROM ledger.sequence WHERE position = (SELECT notification_id "
                "FROM ledger.events WHERE originator_id = $1 AND originator_version = 2)",
                stream_id,
            )
            await connection.execute(
                "DELETE FROM ledger.events WHERE originator_id = $1 AND originator_version = 2",
                stream_id,
            )
        streams = await audit.verify_streams(connection)
        assert streams.stream_id == stream_id
        assert streams.broken is not None
        assert streams.broken.version == 3
        assert "where 2 was expected" in streams.broken.reason
    finally:
        await connection.close()
