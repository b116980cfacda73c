"""Real servers for the tests: the machine's when the env URLs are set, else embedded ones.

LEDGER_TEST_DATABASE_URL / LEDGER_TEST_NATS_URL name servers to use; without them one
embedded PostgreSQL and one embedded NATS are started for the whole run and stopped at
its end. Each run gets its own database and its own JetStream stream names, so runs on
a shared server never see each other.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ledger.migrate import migrate
from ledger.store import Checkpoint, EventStore

RUN_ID = secrets.token_hex(4)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL with rights to create databases."""
    url = os.environ.get("LEDGER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from ledger.embedded import EmbeddedPostgres

    with EmbeddedPostgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server.url


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("LEDGER_TEST_NATS_URL")
    if url:
        yield url
        return
    from ledger.embedded import EmbeddedNats

    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


@pytest.fixture(scope="session")
def stream_prefix() -> str:
    """A JetStream stream-name prefix of this run's own."""
    return f"LEDGER_TEST_{RUN_ID.upper()}"


class Databases:
    """Creates migrated databases of this run's own and drops them at its end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    async def create(self, label: str, *, migrated: bool = True) -> str:
        name = f"ledger_test_{RUN_ID}_{label}_{len(self.created)}"
        admin = await asyncpg.connect(self.server_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self.created.append(name)
        url = with_database(self.server_url, name)
        if migrated:
            await migrate(url)
        return url

    async def drop_all(self) -> None:
        admin = await asyncpg.connect(self.server_url)
        try:
            for name in self.created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def databases(server_url: str) -> AsyncIterator[Databases]:
    created = Databases(server_url)
    yield created
    await created.drop_all()


@pytest.fixture(scope="session")
async def database_url(databases: Databases) -> str:
    """The run's shared, migrated database."""
    return await databases.create("shared")


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=2, max_size=60)
    yield created
    await created.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> EventStore:
    return EventStore(pool)


@pytest.fixture
async def log_head(store: EventStore) -> Checkpoint:
    """The committed log's end before the test: followers start here to see only its events."""
    return await store.last_checkpoint()
