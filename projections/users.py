"""Read model `users`: one row per user, with its role, token version and status.

The password hash is kept here because the API's login looks users up by email.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from ledger.domain import Event
from ledger.domain.user import PasswordChanged, RoleChanged, UserDisabled, UserRegistered
from projections import batch
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


# Page fold (projections/batch.py): the same rows, each written once per page.

COLUMNS: Final = (
    "user_id", "email", "display_name", "role", "password_hash", "token_version",
    "disabled", "disabled_reason", "registered_at", "updated_at", "version",
)  # fmt: skip
_ROLE, _PASSWORD_HASH, _TOKEN_VERSION, _DISABLED, _DISABLED_REASON, _UPDATED_AT, _VERSION = (
    COLUMNS.index(name)
    for name in ("role", "password_hash", "token_version", "disabled", "disabled_reason",
                 "updated_at", "version")
)  # fmt: skip


class Page(batch.Page):
    def __init__(self) -> None:
        self.users = batch.Rows(
            "users",
            COLUMNS,
            "user_id",
            free_text=("email", "display_name", "password_hash", "disabled_reason"),
        )

    def taken(self) -> Any:
        return self.users.take()

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: batch.Staging, taken: Any
    ) -> None:
        await self.users.write(connection, schema, staging, taken)


def _fold_registered(page: Page, event: UserRegistered, meta: batch.Meta) -> None:
    page.users.insert(
        event.user_id,
        [event.user_id, event.email, event.display_name, event.role.value, event.password_hash,
         event.token_version, False, None, event.occurred_at, event.occurred_at, meta.version],
    )  # fmt: skip


def _changed(page: Page, event: Event, meta: batch.Meta) -> list[Any]:
    row = page.users.row(meta.stream_id)
    row[_UPDATED_AT] = event.occurred_at
    row[_VERSION] = meta.version
    return row


def _fold_password_changed(page: Page, event: PasswordChanged, meta: batch.Meta) -> None:
    row = _changed(page, event, meta)
    row[_PASSWORD_HASH] = event.password_hash
    row[_TOKEN_VERSION] = event.token_version


def _fold_role_changed(page: Page, event: RoleChanged, meta: batch.Meta) -> None:
    row = _changed(page, event, meta)
    row[_ROLE] = event.role.value
    row[_TOKEN_VERSION] = event.token_version


def _fold_disabled(page: Page, event: UserDisabled, meta: batch.Meta) -> None:
    row = _changed(page, event, meta)
    row[_DISABLED] = True
    row[_DISABLED_REASON] = event.reason
    row[_TOKEN_VERSION] = event.token_version


Page.FOLDS = {
    UserRegistered: _fold_registered,
    PasswordChanged: _fold_password_changed,
    RoleChanged: _fold_role_changed,
    UserDisabled: _fold_disabled,
}

HANDLERS: Final[Handlers] = {
    UserRegistered: _registered,
    PasswordChanged: _password_changed,
    RoleChanged: _role_changed,
    UserDisabled: _disabled,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
