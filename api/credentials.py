"""SQL on the API's sign-in tables (migrations_sql/0020_auth.sql), one statement each.

auth.credentials is the API's lookup of users by email and the authority on their
current token_version; it is written in the same request as the user command it
mirrors (see docs/adr/0006-api.md).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Final

import asyncpg
import msgspec

from ledger.domain.user import Role

LOCKOUT_FAILURES_MAX: Final = 5
LOCKOUT_WINDOW: Final = timedelta(minutes=15)


class Credential(msgspec.Struct, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: str
    password_hash: str
    role: Role
    token_version: int
    disabled: bool


class RefreshRow(msgspec.Struct, frozen=True, kw_only=True):
    family_id: uuid.UUID
    user_id: uuid.UUID
    token_version: int
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


COLUMNS: Final = ("user_id", "email", "password_hash", "role", "token_version", "disabled")
_COLUMNS: Final = ", ".join(COLUMNS)


def credential_of(row: asyncpg.Record) -> Credential:
    return Credential(
        user_id=row["user_id"],
        email=row["email"],
        password_hash=row["password_hash"],
        role=Role(row["role"]),
        token_version=row["token_version"],
        disabled=row["disabled"],
    )


async def by_email(executor: asyncpg.Pool | asyncpg.Connection, email: str) -> Credential | None:
    row = await executor.fetchrow(
        f"SELECT {_COLUMNS} FROM auth.credentials WHERE email = $1", email
    )
    return None if row is None else credential_of(row)


async def by_id(
    executor: asyncpg.Pool | asyncpg.Connection, user_id: uuid.UUID
) -> Credential | None:
    row = await executor.fetchrow(
        f"SELECT {_COLUMNS} FROM auth.credentials WHERE user_id = $1", user_id
    )
    return None if row is None else credential_of(row)


async def upsert(executor: asyncpg.Pool | asyncpg.Connection, credential: Credential) -> None:
    """Insert or refresh a user's row from its stream's state; never an older version."""
    await executor.execute(
        f"INSERT INTO auth.credentials ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, "
        "password_hash = EXCLUDED.password_hash, role = EXCLUDED.role, "
        "token_version = EXCLUDED.token_version, disabled = EXCLUDED.disabled, "
        "updated_at = now() WHERE auth.credentials.token_version <= EXCLUDED.token_version",
        credential.user_id,
        credential.email,
        credential.password_hash,
        credential.role.value,
        credential.token_version,
        credential.disabled,
    )


# Lockout ---------------------------------------------------------------------


async def is_locked(pool: asyncpg.Pool, email: str, now: datetime) -> bool:
    failures = await pool.fetchval(
        "SELECT failures FROM auth.login_failures WHERE email = $1 AND window_start_at > $2",
        email,
        now - LOCKOUT_WINDOW,
    )
    return failures is not None and failures >= LOCKOUT_FAILURES_MAX


async def record_failure(pool: asyncpg.Pool, email: str, now: datetime) -> None:
    """Count a failed sign-in; a window older than LOCKOUT_WINDOW starts afresh."""
    await pool.execute(
        "INSERT INTO auth.login_failures (email, failures, window_start_at) VALUES ($1, 1, $2) "
        "ON CONFLICT (email) DO UPDATE SET "
        "failures = CASE WHEN auth.login_failures.window_start_at > $3 "
        "THEN auth.login_failures.failures + 1 ELSE 1 END, "
        "window_start_at = CASE WHEN auth.login_failures.window_start_at > $3 "
        "THEN auth.login_failures.window_start_at ELSE $2 END",
        email,
        now,
        now - LOCKOUT_WINDOW,
    )


async def clear_failures(pool: asyncpg.Pool, email: str) -> None:
    await pool.execute("DELETE FROM auth.login_failures WHERE email = $1", email)


# Refresh tokens --------------------------------------------------------------


async def insert_refresh(
    executor: asyncpg.Pool | asyncpg.Connection,
    token_hash: bytes,
    *,
    family_id: uuid.UUID,
    user_id: uuid.UUID,
    token_version: int,
    expires_at: datetime,
) -> None:
    await executor.execute(
        "INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, token_version, "
        "expires_at) VALUES ($1, $2, $3, $4, $5)",
        token_hash,
        family_id,
        user_id,
        token_version,
        expires_at,
    )


async def lock_refresh(connection: asyncpg.Connection, token_hash: bytes) -> RefreshRow | None:
    """The token's row, locked until the transaction ends: one rotation wins a race."""
    row = await connection.fetchrow(
        "SELECT family_id, user_id, token_version, expires_at, used_at, revoked_at "
        "FROM auth.refresh_tokens WHERE token_hash = $1 FOR UPDATE",
        token_hash,
    )
    return None if row is None else RefreshRow(**dict(row))


async def mark_used(connection: asyncpg.Connection, token_hash: bytes, now: datetime) -> None:
    await connection.execute(
        "UPDATE auth.refresh_tokens SET used_at = $2 WHERE token_hash = $1", token_hash, now
    )


async def revoke_family(
    executor: asyncpg.Pool | asyncpg.Connection, family_id: uuid.UUID, now: datetime
) -> None:
    await executor.execute(
        "UPDATE auth.refresh_tokens SET revoked_at = $2 "
        "WHERE family_id = $1 AND revoked_at IS NULL",
        family_id,
        now,
    )


async def revoke_access(pool: asyncpg.Pool, jti: str, expires_at: datetime) -> None:
    await pool.execute(
        "INSERT INTO auth.revoked_access_tokens (jti, expires_at) VALUES ($1, $2) "
        "ON CONFLICT (jti) DO NOTHING",
        jti,
        expires_at,
    )
