"""Read model `users`: one row per user, with its role, token version and status.

The password hash is kept here because the API's login looks users up by email.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from ledger.domain import Event
from ledger.domain.user import PasswordChanged, RoleChanged, UserDisabled, UserRegistered
from projections.base import EventMeta, Handlers, dispatch, execute

NAME: Final = "users"
TABLES: Final = ("users",)


async def _registered(
    connection: asyncpg.Connection, event: UserRegistered, meta: EventMeta
) -> None:
    await execute(
        connection,
        "INSERT INTO users (user_id, email, display_name, role, password_hash, token_version, "
        "disabled, registered_at, updated_at, version) "
        "VALUES ($1, $2, $3, $4, $5, $6, false, $7, $7, $8)",
        event.user_id,
        event.email,
        event.display_name,
        event.role.value,
        event.password_hash,
        event.token_version,
        event.occurred_at,
        meta.version,
    )


async def _password_changed(
    connection: asyncpg.Connection, event: PasswordChanged, meta: EventMeta
) -> None:
    await execute(
        connection,
        "UPDATE users SET password_hash = $2, token_version = $3, updated_at = $4, version = $5 "
        "WHERE user_id = $1",
        meta.stream_id,
        event.password_hash,
        event.token_version,
        event.occurred_at,
        meta.version,
    )


async def _role_changed(
    connection: asyncpg.Connection, event: RoleChanged, meta: EventMeta
) -> None:
    await execute(
        connection,
        "UPDATE users SET role = $2, token_version = $3, updated_at = $4, version = $5 "
        "WHERE user_id = $1",
        meta.stream_id,
        event.role.value,
        event.token_version,
        event.occurred_at,
        meta.version,
    )


async def _disabled(connection: asyncpg.Connection, event: UserDisabled, meta: EventMeta) -> None:
    await execute(
        connection,
        "UPDATE users SET disabled = true, disabled_reason = $2, token_version = $3, "
        "updated_at = $4, version = $5 WHERE user_id = $1",
        meta.stream_id,
        event.reason,
        event.token_version,
        event.occurred_at,
        meta.version,
    )


HANDLERS: Final[Handlers] = {
    UserRegistered: _registered,
    PasswordChanged: _password_changed,
    RoleChanged: _role_changed,
    UserDisabled: _disabled,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
