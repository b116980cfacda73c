"""AccessChecks: concurrent token checks merged into few statements, each answered with
exactly what a statement of its own would have said, revocations included."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from api import credentials
from api.access_checks import AccessChecks
from api.credentials import Credential
from ledger.domain.user import Role

EXPIRES_AT = datetime.now(UTC) + timedelta(minutes=15)


class CountingPool:
    """The real pool, counting the statements sent through `fetch`; it can fail them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements = 0
        self.failing = False

    async def fetch(self, sql: str, *arguments: Any) -> list[asyncpg.Record]:
        self.statements += 1
        if self.failing:
            raise ConnectionResetError("the database went away")
        return await self.pool.fetch(sql, *arguments)


async def user(pool: asyncpg.Pool, *, version: int = 1, disabled: bool = False) -> Credential:
    user_id = uuid.uuid4()
    credential = Credential(
        user_id=user_id,
        email=f"{user_id.hex[:12]}@example.com",
        password_hash="$argon2id$not-checked-here",
        role=Role.TRADER,
        token_version=version,
        disabled=disabled,
    )
    await credentials.upsert(pool, credential)
    return credential


def checks_of(counting: CountingPool, **options: int) -> AccessChecks:
    return AccessChecks(counting, **options)  # type: ignore[arg-type]


async def test_concurrent_checks_share_statements_and_each_gets_its_own_answer(
    pool: asyncpg.Pool,
) -> None:
    users = [await user(pool, version=n + 1, disabled=n % 3 == 0) for n in range(12)]
    revoked = uuid.uuid4().hex
    await credentials.revoke_access(pool, revoked, EXPIRES_AT)
    asked: list[tuple[uuid.UUID, str, Credential | None, bool]] = []
    for index, known in enumerate(users):
        jti = revoked if index % 4 == 1 else uuid.uuid4().hex
        asked.append((known.user_id, jti, known, jti == revoked))
    # Users that do not exist, with a revoked jti too: no credential, not revoked.
    asked += [(uuid.uuid4(), uuid.uuid4().hex, None, False), (uuid.uuid4(), revoked, None, False)]
    # One user checked twice at once with different tokens.
    asked.append((users[2].user_id, revoked, users[2], True))
    counting = CountingPool(pool)
    checks = checks_of(counting, queries_max=1)
    answers = await asyncio.gather(*(checks.check(user_id, jti) for user_id, jti, _, _ in asked))
    assert answers == [(credential, is_revoked) for _, _, credential, is_revoked in asked]
    # The first check goes alone; all the others wait for it and go together.
    assert counting.statements == 2


async def test_a_lone_check_is_sent_at_once_and_the_merged_statement_is_bounded(
    pool: asyncpg.Pool,
) -> None:
    known = await user(pool)
    counting = CountingPool(pool)
    checks = checks_of(counting, queries_max=1, checks_per_query_max=3)
    assert await checks.check(known.user_id, "a") == (known, False)
    assert counting.statements == 1
    answers = await asyncio.gather(*(checks.check(known.user_id, str(n)) for n in range(10)))
    assert answers == [(known, False)] * 10
    # 1 alone, then 9 waiting in statements of at most 3.
    assert counting.statements == 1 + 1 + 3


async def test_a_revocation_committed_before_a_check_is_asked_is_seen(pool: asyncpg.Pool) -> None:
    known = await user(pool)
    checks = AccessChecks(pool, queries_max=1)
    jti = uuid.uuid4().hex
    assert await checks.check(known.user_id, jti) == (known, False)
    # A logout commits; checks queued behind a running one still see it.
    await credentials.revoke_access(pool, jti, EXPIRES_AT)
    # So does a password change that moved the user's token_version on.
    newer = msgspec.structs.replace(known, token_version=known.token_version + 1)
    await credentials.upsert(pool, newer)
    answers = await asyncio.gather(*(checks.check(known.user_id, jti) for _ in range(5)))
    assert answers == [(newer, True)] * 5


async def test_a_failed_statement_fails_its_checks_only(pool: asyncpg.Pool) -> None:
    known = await user(pool)
    counting = CountingPool(pool)
    checks = checks_of(counting, queries_max=1)
    counting.failing = True
    failed = await asyncio.gather(
        *(checks.check(known.user_id, str(n)) for n in range(4)), return_exceptions=True
    )
    assert all(isinstance(answer, ConnectionResetError) for answer in failed)
    counting.failing = False
    assert await checks.check(known.user_id, "after") == (known, False)


async def test_a_cancelled_check_leaves_the_others_answered(pool: asyncpg.Pool) -> None:
    known = await user(pool)
    checks = AccessChecks(pool, queries_max=1)
    first = asyncio.create_task(checks.check(known.user_id, "first"))
    waiting = [asyncio.create_task(checks.check(known.user_id, str(n))) for n in range(3)]
    await asyncio.sleep(0)
    waiting[1].cancel()
    assert await first == (known, False)
    assert await waiting[0] == (known, False)
    assert await waiting[2] == (known, False)
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
