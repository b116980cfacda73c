"""Users through the command layer, mirrored into the API's auth.credentials.

auth.credentials is a synchronous cache of each user's stream: after every user
command the API copies the stream's state (email, password hash, role, token_version,
disabled) into it, never moving token_version backwards. If the process dies between
the append and the copy, the next sign-in with that email finds no row, loads the
user's stream (its id is derived from the email) and copies it then, so the log stays
the one source of truth and nothing is lost.
"""

from __future__ import annotations

import uuid

import asyncpg
import msgspec

from api import credentials
from api.passwords import Passwords
from commands import users
from commands.runtime import CommandContext, CommandResult, Ledger
from ledger.domain.errors import InvalidEmailError
from ledger.domain.user import STREAM_TYPE, Role, UserState


class Registered(msgspec.Struct, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: str
    role: Role
    result: CommandResult


class Registrar:
    """Registers users and keeps their credential rows in step with their streams."""

    def __init__(self, pool: asyncpg.Pool, ledger: Ledger, passwords: Passwords) -> None:
        self.pool = pool
        self.ledger = ledger
        self.passwords = passwords

    async def register(
        self,
        *,
        email: str,
        password: str,
        display_name: str | None,
        role: Role,
        context: CommandContext,
    ) -> Registered:
        user_id = users.user_stream_id(email)  # Raises InvalidEmailError first.
        password_hash = await self.passwords.hash(password)
        normalized = email.strip().lower()
        command = users.RegisterUser(
            email=normalized,
            display_name=display_name or normalized.split("@", 1)[0],
            role=role,
            password_hash=password_hash,
        )
        result = await users.register_user(self.ledger, command, context)
        state = await self.sync(user_id)
        assert state is not None, "a registered user has a stream"
        return Registered(user_id=user_id, email=state.email, role=state.role, result=result)

    async def sync(self, user_id: uuid.UUID) -> UserState | None:
        """Copy the user's stream state into auth.credentials; None if no such user."""
        loaded = await self.ledger.repository.load({user_id: STREAM_TYPE})
        state: UserState | None = loaded[user_id].state
        if state is not None:
            await credentials.upsert(
                self.pool,
                credentials.Credential(
                    user_id=state.user_id,
                    email=state.email,
                    password_hash=state.password_hash,
                    role=state.role,
                    token_version=state.token_version,
                    disabled=state.disabled,
                ),
            )
        return state

    async def credential_for(self, email: str) -> credentials.Credential | None:
        """The credential of `email` (already normalized), healed from the log if missing."""
        found = await credentials.by_email(self.pool, email)
        if found is not None:
            return found
        try:
            user_id = users.user_stream_id(email)
        except InvalidEmailError:
            return None
        if await self.sync(user_id) is None:
            return None
        return await credentials.by_email(self.pool, email)
