"""The eventsourcing library's view of the ledger's database (DESIGN.md point 7).

`ledger.events` has the columns of eventsourcing's PostgreSQL table, so its
`PostgresApplicationRecorder` reads the log as its own (`events_table_name="events"` in
schema `ledger`). `eventsourcing_datastore` opens its datastore from the ledger's own
PostgreSQL URL, a Unix socket's (`?host=/folder&port=5432`) included.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from eventsourcing.postgres import PostgresDatastore


def eventsourcing_datastore(
    database_url: str, *, schema: str = "ledger", **options: Any
) -> PostgresDatastore:
    """eventsourcing's datastore on the database `database_url` names; `options` go to
    PostgresDatastore as they are (pool_size, max_overflow, ...)."""
    parts = urlsplit(database_url)
    query = parse_qs(parts.query)
    return PostgresDatastore(
        dbname=unquote(parts.path.lstrip("/")),
        host=query.get("host", [parts.hostname or "127.0.0.1"])[0],
        port=query.get("port", [str(parts.port or 5432)])[0],
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        schema=schema,
        **options,
    )
