"""Housekeeping deletes exactly the rows past their use, in batches, one process at a time;
the app runs it in the background."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime, timedelta

import asyncpg
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.credentials import LOCKOUT_WINDOW
from api.housekeeping import LOCK_CLASS, Housekeeping
from tests.conftest import Databases
from tests.e2e.conftest import app_settings
from tests.waiting import eventually

RETENTION = timedelta(days=1)


class Rows:
    """Rows of each table, some past their use and some not, all of this test's own."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.user_id = uuid.uuid4()
        self.dead: dict[str, list[object]] = {}
        self.live: dict[str, list[object]] = {}

    async def add_user(self) -> None:
        await self.pool.execute(
            "INSERT INTO auth.credentials (user_id, email, password_hash, role) "
            "VALUES ($1, $2, 'x', 'trader')",
            self.user_id,
            f"keeper-{secrets.token_hex(6)}@example.com",
        )

    async def add(self, *, dead: bool, now: datetime) -> None:
        token_hash = hashlib.sha256(secrets.token_bytes(16)).digest()
        jti = secrets.token_hex(8)
        email = f"failing-{secrets.token_hex(6)}@example.com"
        key = secrets.token_hex(8)
        expires = now - timedelta(minutes=1) if dead else now + timedelta(minutes=1)
        window = now - LOCKOUT_WINDOW - timedelta(minutes=1) if dead else now
        recorded = now - RETENTION - timedelta(minutes=1) if dead else now - timedelta(hours=1)
        await self.pool.execute(
            "INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, token_version, "
            "expires_at) VALUES ($1, $2, $3, 1, $4)",
            token_hash,
            uuid.uuid4(),
            self.user_id,
            expires,
        )
        await self.pool.execute(
            "INSERT INTO auth.revoked_access_tokens (jti, expires_at) VALUES ($1, $2)", jti, expires
        )
        await self.pool.execute(
            "INSERT INTO auth.login_failures (email, failures, window_start_at) VALUES ($1, 3, $2)",
            email,
            window,
        )
        await self.pool.execute(
            "INSERT INTO api.idempotent_responses (user_id, key, fingerprint, status, body, "
            "recorded_at) VALUES ($1, $2, $3, 202, '{}', $4)",
            self.user_id,
            key,
            bytes(32),
            recorded,
        )
        kept = self.dead if dead else self.live
        for table, value in (
            ("refresh_tokens", token_hash),
            ("revoked_access_tokens", jti),
            ("login_failures", email),
            ("idempotent_responses", key),
        ):
            kept.setdefault(table, []).append(value)

    async def present(self) -> dict[str, set[object]]:
        found = {
            "refresh_tokens": await self.pool.fetch(
                "SELECT token_hash AS v FROM auth.refresh_tokens WHERE user_id = $1", self.user_id
            ),
            "revoked_access_tokens": await self.pool.fetch(
                "SELECT jti AS v FROM auth.revoked_access_tokens WHERE jti = ANY($1)",
                self.dead["revoked_access_tokens"] + self.live["revoked_access_tokens"],
            ),
            "login_failures": await self.pool.fetch(
                "SELECT email AS v FROM auth.login_failures WHERE email = ANY($1)",
                self.dead["login_failures"] + self.live["login_failures"],
            ),
            "idempotent_responses": await self.pool.fetch(
                "SELECT key AS v FROM api.idempotent_responses WHERE user_id = $1", self.user_id
            ),
        }
        return {table: {row["v"] for row in rows} for table, rows in found.items()}

    def expected_live(self) -> dict[str, set[object]]:
        return {table: set(values) for table, values in self.live.items()}


async def rows_of(pool: asyncpg.Pool, *, dead: int, live: int) -> Rows:
    rows = Rows(pool)
    await rows.add_user()
    now = await pool.fetchval("SELECT now()")
    for _ in range(dead):
        await rows.add(dead=True, now=now)
    for _ in range(live):
        await rows.add(dead=False, now=now)
    return rows


async def test_a_pass_deletes_the_rows_past_their_use_and_keeps_the_others(
    pool: asyncpg.Pool,
) -> None:
    rows = await rows_of(pool, dead=2, live=2)
    deleted = await Housekeeping(pool, idempotency_retention=RETENTION).run_pass()
    assert deleted is not None
    # Other tests' dead rows may go too: at least ours did.
    assert all(count >= 2 for count in deleted.values()), deleted
    assert await rows.present() == rows.expected_live()


async def test_a_pass_deletes_in_batches_until_none_is_left(pool: asyncpg.Pool) -> None:
    rows = await rows_of(pool, dead=5, live=1)
    keeper = Housekeeping(pool, idempotency_retention=RETENTION, batch_rows=2)
    deleted = await keeper.run_pass()
    assert deleted is not None
    assert all(count >= 5 for count in deleted.values()), deleted
    assert await rows.present() == rows.expected_live()


async def test_a_pass_leaves_the_work_to_the_process_holding_the_lock(pool: asyncpg.Pool) -> None:
    rows = await rows_of(pool, dead=1, live=1)
    keeper = Housekeeping(pool, idempotency_retention=RETENTION)
    async with pool.acquire() as other:
        await other.execute("SELECT pg_advisory_lock($1, 0)", LOCK_CLASS)
        try:
            assert await keeper.run_pass() is None
            assert await rows.present() != rows.expected_live()
        finally:
            await other.execute("SELECT pg_advisory_unlock($1, 0)", LOCK_CLASS)
    assert await keeper.run_pass() is not None
    assert await rows.present() == rows.expected_live()


async def test_the_app_runs_housekeeping_in_the_background(
    databases: Databases, nats_url: str
) -> None:
    interval_s = 0.05
    database_url = await databases.create("keeper")
    settings = app_settings(database_url, nats_url, housekeeping_interval_s=interval_s)
    # The app runs on a loop of the test client's own: this test has its own pool.
    async with (
        asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool,
        AsyncTestClient(app=create_app(settings)) as client,
    ):
        rows = await rows_of(pool, dead=1, live=1)

        async def purged() -> bool:
            return await rows.present() == rows.expected_live()

        await eventually(purged, "the dead rows are deleted", timeout_s=10.0)
        response = await client.get("/metrics")
        assert 'ledger_housekeeping_deleted_total{table="auth.refresh_tokens"}' in response.text
