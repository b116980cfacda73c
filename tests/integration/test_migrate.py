"""ledger migrate: in order, once, with checksums; edited files refused; concurrent-safe."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ledger.migrate import MigrationError, load_migrations, migrate
from tests.conftest import Databases


async def test_fresh_database_gets_every_migration_recorded_once(databases: Databases) -> None:
    url = await databases.create("migrate")
    names = [migration.name for migration in load_migrations()]
    assert await migrate(url) == []  # Databases.create already migrated it.
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT name, checksum FROM ledger.schema_migrations ORDER BY version"
        )
    finally:
        await connection.close()
    assert [row["name"] for row in rows] == names
    assert [row["checksum"] for row in rows] == [m.checksum for m in load_migrations()]


async def test_concurrent_first_runs_apply_each_file_once(
    server_url: str, databases: Databases
) -> None:
    url = await databases.create("concurrent", migrated=False)
    results = await asyncio.gather(*(migrate(url) for _ in range(4)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in load_migrations())


async def test_an_applied_file_that_was_edited_is_refused(databases: Databases) -> None:
    url = await databases.create("edited")
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "UPDATE ledger.schema_migrations SET checksum = 'deadbeef' WHERE version = 1"
        )
    finally:
        await connection.close()
    with pytest.raises(MigrationError, match="was edited after it was applied"):
        await migrate(url)
