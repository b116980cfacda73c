"""Registering a user: the user command, and the API's credential row beside it.

The credential row is inserted first, in a transaction held open while the command
appends: its unique email index makes a second registration of the same email wait
for the first and then fail with EMAIL_TAKEN, and a refused command rolls the row
back. The append and the credential commit are two transactions; if the process dies
between them the user exists in the log without a credential (an admin re-creates
it), never the reverse. The number of registrations in flight is bounded, because
each holds two pool connections.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Final

import asyncpg
import msgspec

from api import credentials
from api.passwords import Passwords
from api.tokens import utc_now
from commands.runtime import CommandContext, CommandResult, Repository, retrying
from ledger.domain import StreamEvent
from ledger.domain.errors import EmailTakenError
from ledger.domain.user import (
    STREAM_TYPE,
    RegisterUser,
    Role,
    decide_register_user,
    normalize_email,
)

REGISTRATIONS_IN_FLIGHT_MAX: Final = 4
ACQUIRE_TIMEOUT_S: Final = 10.0


class Registered(msgspec.Struct, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: str
    role: Role
    result: CommandResult


class Registrar:
    """Registers users through the command layer and mirrors them into auth.credentials."""

    def __init__(self, pool: asyncpg.Pool, repository: Repository, passwords: Passwords) -> None:
        self.pool = pool
        self.repository = repository
        self.passwords = passwords
        self._in_flight = asyncio.Semaphore(REGISTRATIONS_IN_FLIGHT_MAX)

    async def register(
        self,
        *,
        email: str,
        password: str,
        display_name: str | None,
        role: Role,
        context: CommandContext,
    ) -> Registered:
        normalized = normalize_email(email)
        password_hash = await self.passwords.hash(password)
        command = RegisterUser(
            user_id=uuid.uuid4(),
            email=normalized,
            display_name=display_name or normalized.split("@", 1)[0],
            role=role,
            password_hash=password_hash,
        )
        credential = credentials.Credential(
            user_id=command.user_id,
            email=normalized,
            password_hash=password_hash,
            role=role,
            token_version=1,
            disabled=False,
        )
        async with (
            self._in_flight,
            self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as connection,
            connection.transaction(),
        ):
            try:
                await credentials.insert(connection, credential)
            except asyncpg.UniqueViolationError:
                raise EmailTakenError(f"email {normalized} is already registered") from None
            result = await register_user(self.repository, command, context)
        return Registered(user_id=command.user_id, email=normalized, role=role, result=result)


async def register_user(
    repository: Repository, command: RegisterUser, context: CommandContext
) -> CommandResult:
    """Load the new user's stream, decide, append; the credential row guards the email."""

    async def attempt() -> CommandResult:
        loaded = await repository.load({command.user_id: STREAM_TYPE})
        events = decide_register_user(
            loaded[command.user_id].state, command, now=utc_now(), email_taken=False
        )
        stream_events = [StreamEvent(command.user_id, STREAM_TYPE, event) for event in events]
        append = await repository.save(stream_events, loaded, context)
        return CommandResult(stream_events, append)

    return await retrying(attempt)
