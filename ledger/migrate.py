"""Apply migrations_sql/NNNN_name.sql in order, each once, each in its own transaction.

An applied file is recorded with the SHA-256 of its text; if that text changes later
the run is refused, because the database no longer matches what the file says.
A session-level advisory lock makes concurrent runs wait for each other.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# An arbitrary constant that identifies "the ledger's migrations" among advisory locks.
ADVISORY_LOCK_KEY = 0x1ED6E5
LOCK_TIMEOUT_S = 120.0

BOOTSTRAP_SQL = """
CREATE SCHEMA IF NOT EXISTS ledger;
CREATE TABLE IF NOT EXISTS ledger.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


class MigrationError(Exception):
    """Raised when the migrations on disk and those recorded in the database disagree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The migration files shipped with the package, in version order."""
    folder = resources.files("migrations_sql")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


async def migrate(database_url: str) -> list[str]:
    """Apply every pending migration; return the names of the files applied now."""
    connection = await asyncpg.connect(database_url)
    try:
        # Two concurrent first runs would race on CREATE SCHEMA, so lock before bootstrap.
        await connection.execute(f"SET lock_timeout = '{int(LOCK_TIMEOUT_S * 1000)}ms'")
        await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            await connection.execute(BOOTSTRAP_SQL)
            return await _apply_pending(connection, load_migrations())
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await connection.close()


async def _apply_pending(connection: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    rows = await connection.fetch("SELECT version, name, checksum FROM ledger.schema_migrations")
    recorded = {row["version"]: row for row in rows}
    on_disk = {migration.version for migration in migrations}
    unknown = sorted(set(recorded) - on_disk)
    if unknown:
        names = ", ".join(recorded[version]["name"] for version in unknown)
        raise MigrationError(f"the database has migrations this code does not know: {names}")
    applied: list[str] = []
    for migration in migrations:
        row = recorded.get(migration.version)
        if row is not None:
            if row["checksum"] != migration.checksum:
                raise MigrationError(
                    f"{migration.name} was edited after it was applied "
                    f"(recorded sha256 {row['checksum'][:12]}…, file {migration.checksum[:12]}…); "
                    "applied migrations are never edited: add a new file instead"
                )
            continue
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO ledger.schema_migrations (version, name, checksum) "
                "VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        applied.append(migration.name)
    return applied
