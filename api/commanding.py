"""What every command route shares: the command context and Idempotency-Key.

A command route runs through `run_command`: with an `Idempotency-Key` header, a retry
with the same key and the same body (method, path and bytes) gets the first answer
back (`Idempotent-Replayed: true`); the same key with another body is a 409
IDEMPOTENCY_KEY_REUSED. Keys are scoped to the calling user. Only successful answers
are kept: a refused command may be retried with the same key once its cause is fixed.
The key also goes to the event store with the append (as "user:key"), which dedupes
the append itself should the answer not have been stored (a crash in between).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import asyncpg
import msgspec
from litestar import Request, Response

from api.consistency import encode_token
from api.errors import ApiProblem
from api.request_id import correlation_id_of, request_id_of
from api.security import principal_of
from commands.runtime import CommandContext, CommandResult

HEADER: Final = "idempotency-key"
KEY_PATTERN: Final = re.compile(r"[\x21-\x7e]{1,200}")
_IDS_NAMESPACE: Final = uuid.UUID("5d8f0c3a-7b1e-4f2a-9c6d-0e4b8a2f1d37")

T = TypeVar("T", bound=msgspec.Struct)


class Idempotency(msgspec.Struct, frozen=True, kw_only=True):
    user_id: uuid.UUID
    key: str
    fingerprint: bytes

    def new_id(self, purpose: str) -> uuid.UUID:
        """An id the same for every retry of this key, so a replay names the same objects."""
        return uuid.uuid5(_IDS_NAMESPACE, f"{self.user_id}:{self.key}:{purpose}")


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """What a command route's body needs: its context and a source of new ids."""

    context: CommandContext
    idempotency: Idempotency | None

    def new_id(self, purpose: str) -> uuid.UUID:
        return uuid.uuid4() if self.idempotency is None else self.idempotency.new_id(purpose)


def command_context(
    request: Request[Any, Any, Any], *, actor: str | None, idempotency: Idempotency | None = None
) -> CommandContext:
    return CommandContext(
        actor=actor,
        correlation_id=correlation_id_of(request_id_of(request.scope)),
        idempotency_key=None if idempotency is None else f"{idempotency.user_id}:{idempotency.key}",
        fingerprint=None if idempotency is None else idempotency.fingerprint,
    )


async def run_command(
    request: Request[Any, Any, Any],
    answer_type: type[T],
    status: int,
    execute: Callable[[Command], Awaitable[T]],
) -> Response[T]:
    """Run `execute` once per idempotency key; answer `status` with its result."""
    principal = principal_of(request)
    idempotency = await _idempotency_of(request, principal.user_id)
    pool: asyncpg.Pool = request.app.state.pool
    if idempotency is not None:
        stored = await _stored(pool, idempotency)
        if stored is not None:
            stored_status, body = stored
            return Response(
                msgspec.json.decode(body, type=answer_type),
                status_code=stored_status,
                headers={"Idempotent-Replayed": "true"},
            )
    command = Command(
        context=command_context(request, actor=str(principal.user_id), idempotency=idempotency),
        idempotency=idempotency,
    )
    answer = await execute(command)
    if idempotency is not None:
        await _remember(pool, idempotency, status, msgspec.json.encode(answer))
    return Response(answer, status_code=status)


async def _idempotency_of(
    request: Request[Any, Any, Any], user_id: uuid.UUID
) -> Idempotency | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not KEY_PATTERN.fullmatch(key):
        raise ApiProblem(
            400,
            "INVALID_IDEMPOTENCY_KEY",
            "Idempotency-Key must be 1 to 200 printable ASCII characters without spaces",
        )
    body = await request.body()
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return Idempotency(user_id=user_id, key=key, fingerprint=digest.digest())


async def _stored(pool: asyncpg.Pool, idempotency: Idempotency) -> tuple[int, bytes] | None:
    row = await pool.fetchrow(
        "SELECT fingerprint, status, body FROM api.idempotent_responses "
        "WHERE user_id = $1 AND key = $2",
        idempotency.user_id,
        idempotency.key,
    )
    if row is None:
        return None
    if bytes(row["fingerprint"]) != idempotency.fingerprint:
        raise _key_reused(idempotency.key)
    return int(row["status"]), bytes(row["body"])


async def _remember(pool: asyncpg.Pool, idempotency: Idempotency, status: int, body: bytes) -> None:
    # A concurrent twin may have stored its answer first: both answers name the same ids.
    await pool.execute(
        "INSERT INTO api.idempotent_responses (user_id, key, fingerprint, status, body) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, key) DO NOTHING",
        idempotency.user_id,
        idempotency.key,
        idempotency.fingerprint,
        status,
        body,
    )


def _key_reused(key: str) -> ApiProblem:
    return ApiProblem(
        409, "IDEMPOTENCY_KEY_REUSED", f"Idempotency-Key {key!r} was used for another request"
    )


def token_of(result: CommandResult) -> str | None:
    """The result's consistency token, or None when the command appended nothing."""
    checkpoint = result.consistency_token
    return None if checkpoint is None else encode_token(checkpoint)
