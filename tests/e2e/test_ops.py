"""Operations over HTTP against real servers: rate limits, /metrics, /ready, logs, the 500.

Each test builds the app it needs with its own settings (tight limits, a lag bound of
0, a short query timeout) on a database of its own, so that nothing here depends on
what other tests did. Waits are bounded and nothing asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import jwt
import nats
import psutil
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app, keep_session
from api.users_admin import create_user
from ledger.embedded import EmbeddedNats, free_port
from ledger.logs import ContextFilter, JsonFormatter
from ledger.relay import Relay, RelayOptions
from ledger.settings import Settings
from projections.registry import NAMES
from projections.worker import WorkerOptions, run_projections
from tests.conftest import Databases
from tests.e2e.conftest import (
    JWT_SECRET,
    PASSWORD,
    TEST_HASH_COST,
    app_settings,
    assert_problem,
)
from tests.integration.test_embedded import wait_gone

WAIT_S = 60.0
POLL_S = 0.05
REPO_ROOT = Path(__file__).resolve().parents[2]

Client = AsyncTestClient[Any]


@pytest.fixture
async def database(databases: Databases) -> str:
    return await databases.create("ops")


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def signed_in(client: Client, settings: Settings, role: str) -> tuple[str, str]:
    """A new user of `role`: its id and an access token (one sign-in request)."""
    assert settings.database_url is not None
    email = f"{role}-{secrets.token_hex(6)}@example.com"
    user_id = await create_user(settings.database_url, email, PASSWORD, role, cost=TEST_HASH_COST)
    response = await client.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(user_id), response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- Rate limits -------------------------------------------------------------------


async def test_sign_in_is_limited_per_address_with_headers_and_a_429_problem(
    database: str, nats_url: str
) -> None:
    settings = app_settings(
        database, nats_url, auth_rate_limit_per_minute=3, rate_limit_per_minute=100
    )
    async with serving(settings) as client:
        for remaining in (2, 1, 0):
            response = await client.post(
                "/api/v1/auth/token", json={"email": "nobody@example.com", "password": "x" * 12}
            )
            assert_problem(response, 401, "INVALID_CREDENTIALS")
            assert response.headers["ratelimit-limit"] == "3"
            assert response.headers["ratelimit-remaining"] == str(remaining)
            assert response.headers["ratelimit-policy"] == "3; w=60"
            assert 0 <= int(response.headers["ratelimit-reset"]) <= 60

        refused = await client.post(
            "/api/v1/auth/token", json={"email": "nobody@example.com", "password": "x" * 12}
        )
        problem = assert_problem(refused, 429, "RATE_LIMITED")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-remaining"] == "0"
        assert "3 requests" in problem["detail"]
        # Sign-up and refresh share the address's count; a trailing slash is the same route.
        for path in ("/api/v1/auth/register", "/api/v1/auth/refresh", "/api/v1/auth/token/"):
            assert_problem(await client.post(path, json={}), 429, "RATE_LIMITED")

        # The other routes have their own, looser count; probes and scrapes have none.
        other = await client.get("/api/v1/users/me")
        assert_problem(other, 401, "TOKEN_MISSING")
        assert other.headers["ratelimit-limit"] == "100"
        for path in ("/health", "/ready", "/metrics"):
            response = await client.get(path)
            assert response.status_code in (200, 503), path
            assert "ratelimit-limit" not in response.headers, path


async def test_api_limit_counts_per_user_and_per_address_for_anyone_else(
    database: str, nats_url: str
) -> None:
    settings = app_settings(
        database, nats_url, auth_rate_limit_per_minute=3, rate_limit_per_minute=4
    )
    async with serving(settings) as client:
        first_id, first = await signed_in(client, settings, "trader")
        second_id, second = await signed_in(client, settings, "analyst")

        for remaining in (3, 2, 1, 0):
            response = await client.get("/api/v1/users/me", headers=bearer(first))
            assert response.status_code == 200, response.text
            assert response.headers["ratelimit-remaining"] == str(remaining)
        refused = await client.get("/api/v1/users/me", headers=bearer(first))
        assert_problem(refused, 429, "RATE_LIMITED")
        assert int(refused.headers["retry-after"]) >= 1

        # Another user from the same address has a count of its own...
        other = await client.get("/api/v1/users/me", headers=bearer(second))
        assert other.status_code == 200, other.text
        assert other.headers["ratelimit-remaining"] == "3"
        # ...and so has the address for requests without a (valid) token.
        anonymous = await client.get("/api/v1/users/me")
        assert_problem(anonymous, 401, "TOKEN_MISSING")
        assert anonymous.headers["ratelimit-remaining"] == "3"
        # A token not signed by us cannot borrow a user's count: it is the address's.
        forged = jwt.encode({"sub": second_id}, "not the secret" * 4, algorithm="HS256")
        refused_forged = await client.get("/api/v1/users/me", headers=bearer(forged))
        assert_problem(refused_forged, 401, "TOKEN_INVALID")
        assert refused_forged.headers["ratelimit-remaining"] == "2"
        again = await client.get("/api/v1/users/me", headers=bearer(second))
        assert again.headers["ratelimit-remaining"] == "2"

        # The limited user can still be probed and scraped.
        assert (await client.get("/health", headers=bearer(first))).status_code == 200
        assert (await client.get("/metrics", headers=bearer(first))).status_code == 200
        assert first_id != second_id


# --- Metrics -----------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The sample's value; 0 when absent (a counter never incremented)."""
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def scrape(client: Client) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def http_count(text: str, method: str, path: str, status: int) -> float:
    return value(
        text,
        "ledger_http_requests_total",
        method=method,
        path=path,
        status_code=str(status),
        app_name="ledger",
    )


async def test_metrics_count_requests_by_route_and_commands_by_type_and_outcome(
    database: str, nats_url: str
) -> None:
    settings = app_settings(database, nats_url, rate_limit_per_minute=2)
    async with serving(settings) as client:
        trader_id, trader = await signed_in(client, settings, "trader")
        _, admin = await signed_in(client, settings, "admin")
        before = await scrape(client)

        opened = await client.post(
            "/api/v1/accounts",
            json={"user_id": trader_id, "currency": "USD"},
            headers=bearer(trader),
        )
        assert opened.status_code == 201, opened.text
        missing = uuid.uuid4()
        refused = await client.post(
            f"/api/v1/accounts/{missing}/deposits",
            json={"amount": "10.00", "reference": "wire"},
            headers=bearer(admin),
        )
        assert refused.status_code == 404, refused.text
        code = refused.json()["code"]
        await client.post(f"/api/v1/orders/{missing}/cancel", json={})
        await client.get("/api/v1/users/me")  # 401: raised by authentication middleware.
        assert (await client.get("/api/v1/users/me", headers=bearer(trader))).status_code == 200
        over = await client.get("/api/v1/users/me", headers=bearer(trader))  # trader's 3rd.
        assert_problem(over, 429, "RATE_LIMITED")
        after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ledger_commands_total", command="OpenAccount", outcome="success") == 1
    assert delta("ledger_commands_total", command="Deposit", outcome=code) == 1
    assert delta("ledger_command_duration_seconds_count", command="OpenAccount") == 1
    assert delta("ledger_appends_total") >= 1
    assert delta("ledger_events_appended_total") >= delta("ledger_appends_total")

    # Statuses raised by middleware count as themselves, and paths are route templates.
    assert http_count(after, "POST", "/api/v1/accounts", 201) >= 1
    assert http_count(after, "GET", "/api/v1/users/me", 401) >= 1
    assert http_count(after, "GET", "/api/v1/users/me", 429) >= 1
    assert http_count(after, "POST", "/api/v1/orders/{order_id}/cancel", 401) >= 1
    assert str(missing) not in after

    # The lag, read at the scrape: nothing relays in this test, so all is behind.
    assert value(after, "ledger_lag_up", source="relay") == 1
    assert value(after, "ledger_lag_up", source="projections") == 1
    assert value(after, "ledger_relay_published") == 0
    assert value(after, "ledger_relay_events_behind") >= 2
    for name in NAMES:
        assert ("ledger_projection_checkpoint", frozenset({("projection", name)})) in samples(after)


async def test_a_slow_database_leaves_the_scrape_whole_and_says_so(
    database: str, nats_url: str, server_url: str
) -> None:
    settings = app_settings(database, nats_url, ops_query_timeout_s=0.5)
    async with serving(settings) as client:
        before = await scrape(client)
        assert value(before, "ledger_lag_up", source="projections") == 1
        blocker = await asyncpg.connect(database)
        try:
            # Every read of the checkpoints now waits for this transaction.
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("LOCK TABLE read.checkpoints IN ACCESS EXCLUSIVE MODE")
            during = await scrape(client)
            ready = await client.get("/ready")
            await transaction.rollback()
        finally:
            await blocker.close()
        after = await scrape(client)

    assert value(during, "ledger_lag_up", source="projections") == 0
    assert value(during, "ledger_lag_up", source="relay") == 1
    errors = "ledger_lag_errors_total"
    assert value(during, errors, source="projections", reason="timeout") == (
        value(before, errors, source="projections", reason="timeout") + 1
    )
    # Unknown, not the last value read: NaN (merged over workers, the most recent value).
    for projection in NAMES:
        assert math.isnan(value(during, "ledger_projection_checkpoint", projection=projection))
        assert math.isnan(value(during, "ledger_projection_failing", projection=projection))
    assert http_count(during, "GET", "/metrics", 200) >= 1
    assert ready.status_code == 503
    body = ready.json()
    assert body["projections"] == "error: no answer within 0.5 s"
    assert body["postgres"] == "ok"
    assert value(after, "ledger_lag_up", source="projections") == 1


# --- Readiness ---------------------------------------------------------------------


async def test_ready_names_the_relay_behind_and_a_parked_projection(
    database: str, nats_url: str
) -> None:
    settings = app_settings(
        database, nats_url, ready_relay_lag_s_max=0.0, ready_projection_lag_s_max=0.0
    )
    async with serving(settings) as client:
        empty = await client.get("/ready")
        assert empty.status_code == 200, empty.text
        assert empty.json() == {
            "status": "ok",
            "postgres": "ok",
            "nats": "ok",
            "relay": "ok",
            "projections": "ok",
        }
        # An event that no relay publishes (none runs here) makes the relay part fail.
        await signed_in(client, settings, "trader")
        behind = await client.get("/ready")
        assert behind.status_code == 503
        body = behind.json()
        assert body["status"] == "unavailable"
        assert "events not published (sequenced 0, published 0)" in body["relay"]
        assert (body["postgres"], body["nats"], body["projections"]) == ("ok", "ok", "ok")

        connection = await asyncpg.connect(database)
        try:
            await connection.execute(
                "INSERT INTO read.checkpoints (projection, sequence, failing, last_error, "
                "parked_sequence) VALUES ('orders', 0, true, 'poison: order of no account', 1)"
            )
        finally:
            await connection.close()
        parked = (await client.get("/ready")).json()
        assert parked["projections"] == "orders: parked at sequence 1: poison: order of no account"


async def test_ready_follows_the_real_relay_and_projections(
    database: str, nats_url: str, stream_prefix: str
) -> None:
    stream = f"{stream_prefix}_OPS{secrets.token_hex(2).upper()}"
    relay_stop, workers_stop = asyncio.Event(), asyncio.Event()
    relay = asyncio.create_task(
        Relay(database, nats_url, RelayOptions(stream_name=stream, subject_prefix=stream)).run(
            relay_stop
        )
    )
    workers: asyncio.Task[Any] | None = None
    settings = app_settings(
        database, nats_url, ready_relay_lag_s_max=0.0, ready_projection_lag_s_max=0.0
    )
    try:
        async with serving(settings) as client:
            await signed_in(client, settings, "trader")
            # The workers bind to the stream, which the relay creates: start them after it.
            relayed = await wait_until(client, lambda body: body["relay"] == "ok")
            assert relayed["projections"] != "ok"  # Nothing applies the event yet.
            workers = asyncio.create_task(
                run_projections(
                    database,
                    nats_url,
                    ["all"],
                    stream_name=stream,
                    stop=workers_stop,
                    options=WorkerOptions(
                        stream_name=stream,
                        subject_prefix=stream,
                        fetch_timeout_s=0.2,
                        standby_retry_s=0.1,
                    ),
                )
            )
            caught_up = await wait_until_ready(client)
            assert caught_up == {
                "status": "ok",
                "postgres": "ok",
                "nats": "ok",
                "relay": "ok",
                "projections": "ok",
            }
            scraped = await scrape(client)
            published = value(scraped, "ledger_relay_published")
            assert published >= 1
            assert value(scraped, "ledger_relay_sequenced") == published
            assert value(scraped, "ledger_relay_events_behind") == 0
            assert value(scraped, "ledger_projection_checkpoint", projection="users") == published

            relay_stop.set()
            await asyncio.wait_for(relay, WAIT_S)
            await signed_in(client, settings, "trader")
            stalled = await client.get("/ready")
            assert stalled.status_code == 503
            assert "not published" in stalled.json()["relay"]
    finally:
        relay_stop.set()
        workers_stop.set()
        tasks = [relay] if workers is None else [relay, workers]
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)
        client_nats = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await client_nats.jetstream().delete_stream(stream)
        await client_nats.close()


async def wait_until(client: Client, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first /ready body that is `wanted`; fails with the last body after WAIT_S."""
    last: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT_S):
            while True:
                last = (await client.get("/ready")).json()
                if wanted(last):
                    return last
                await asyncio.sleep(POLL_S)
    raise AssertionError(f"/ready not as wanted within {WAIT_S} s: {last}")


async def wait_until_ready(client: Client) -> dict[str, Any]:
    return await wait_until(client, lambda body: body["status"] == "ok")


async def test_ready_names_nats_when_it_goes_away(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with EmbeddedNats(tmp_path_factory.mktemp("ops-nats")) as server:
        async with serving(app_settings(database, server.url)) as client:
            assert (await client.get("/ready")).json()["nats"] == "ok"
            server.stop()
            body: dict[str, Any] = {}
            async with asyncio.timeout(WAIT_S):
                while True:
                    response = await client.get("/ready")
                    body = response.json()
                    if body["nats"] != "ok":
                        break
                    await asyncio.sleep(POLL_S)
            assert response.status_code == 503
            assert body["nats"] in ("reconnecting", "disconnected")
            assert body["postgres"] == "ok"


async def test_ready_names_postgres_when_it_refuses_connections(
    databases: Databases, nats_url: str
) -> None:
    database = await databases.create("ops_down")
    name = urlsplit(database).path.lstrip("/")
    admin = await asyncpg.connect(databases.server_url)
    try:
        async with serving(app_settings(database, nats_url)) as client:
            assert (await client.get("/ready")).json()["postgres"] == "ok"
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            down = await client.get("/ready")
            assert down.status_code == 503
            body = down.json()
            for part in ("postgres", "relay", "projections"):
                assert body[part].startswith("error: "), body
            assert body["nats"] == "ok"
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            # The pool replaces its dead connections as they are next acquired.
            assert (await wait_until_ready(client))["postgres"] == "ok"
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


# --- Logs and the 500 --------------------------------------------------------------


class JsonLines(logging.Handler):
    """The process's log records as the CLI would write them: JSON, formatted at once."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.addFilter(ContextFilter())
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def log_lines() -> Iterator[JsonLines]:
    handler = JsonLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


async def test_an_unexpected_error_is_a_bare_500_logged_with_its_trace(
    database: str, nats_url: str, log_lines: JsonLines
) -> None:
    settings = app_settings(database, nats_url)
    request_id = f"ops-500-{secrets.token_hex(4)}"
    async with serving(settings) as client:
        trader_id, trader = await signed_in(client, settings, "trader")
        connection = await asyncpg.connect(database)
        try:
            # A table the route needs is gone (say, a migration not applied): a server fault.
            await connection.execute(
                "ALTER TABLE api.idempotent_responses RENAME TO idempotent_responses_away"
            )
            try:
                response = await client.post(
                    "/api/v1/accounts",
                    json={"user_id": trader_id, "currency": "USD"},
                    headers={**bearer(trader), "Idempotency-Key": "k1", "X-Request-ID": request_id},
                )
            finally:
                await connection.execute(
                    "ALTER TABLE api.idempotent_responses_away RENAME TO idempotent_responses"
                )
        finally:
            await connection.close()

    problem = assert_problem(response, 500, "INTERNAL_ERROR")
    assert response.headers["x-request-id"] == request_id
    assert problem["request_id"] == request_id
    assert problem["detail"] == "the server failed to answer this request"
    for leak in ("idempotent_responses", "SELECT", "relation", "asyncpg", "File "):
        assert leak not in response.text

    errors = [line for line in log_lines.lines if line["logger"] == "api.errors"]
    assert len(errors) == 1, log_lines.lines
    (error,) = errors
    assert error["level"] == "error"
    assert error["request_id"] == request_id
    assert "Traceback" in error["exception"]
    assert "UndefinedTableError" in error["exception"]
    assert "idempotent_responses" in error["exception"]

    (access,) = [
        line
        for line in log_lines.lines
        if line.get("request_id") == request_id and line["logger"] == "api.access"
    ]
    assert access["status"] == 500
    assert access["route"] == "/api/v1/accounts"
    assert access["method"] == "POST"
    assert access["user"] == trader_id
    assert isinstance(access["latency_ms"], float)


async def test_every_request_has_one_log_line_with_its_id_user_route_and_status(
    database: str, nats_url: str, log_lines: JsonLines
) -> None:
    settings = app_settings(database, nats_url)
    async with serving(settings) as client:
        user_id, token = await signed_in(client, settings, "auditor")
        me = await client.get("/api/v1/users/me", headers={**bearer(token), "X-Request-ID": "me-1"})
        unknown = await client.get("/api/v1/nothing-here", headers={"X-Request-ID": "lost-1"})
        fresh = await client.get("/health")
    assert me.headers["x-request-id"] == "me-1"
    assert unknown.status_code == 404

    by_id = {line["request_id"]: line for line in log_lines.lines if line["logger"] == "api.access"}
    assert by_id["me-1"]["user"] == user_id
    assert by_id["me-1"]["route"] == "/api/v1/users/me"
    assert by_id["me-1"]["status"] == 200
    assert by_id["me-1"]["latency_ms"] >= 0
    # No route matched: no template and no middleware timing, but still one line.
    assert by_id["lost-1"]["status"] == 404
    assert by_id["lost-1"]["route"] is None
    assert by_id["lost-1"]["path"] == "/api/v1/nothing-here"
    generated = fresh.headers["x-request-id"]
    assert by_id[generated]["route"] == "/health"
    assert by_id[generated]["user"] is None
    ids = [line["request_id"] for line in log_lines.lines if line["logger"] == "api.access"]
    assert len(ids) == len(set(ids))


def test_ledger_serve_writes_json_lines(database: str, nats_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LEDGER_")}
    env |= {
        "LEDGER_DATABASE_URL": database,
        "LEDGER_NATS_URL": nats_url,
        "LEDGER_JWT_SECRET": JWT_SECRET,
        "LEDGER_HTTP_PORT": str(port),
    }
    script = Path(sys.executable).parent / "ledger"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "serve"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
        )
    try:
        wait_for_health(process, f"http://127.0.0.1:{port}", log_path)
        response = httpx.get(
            f"http://127.0.0.1:{port}/health", headers={"X-Request-ID": "serve-1"}, timeout=5
        )
        assert response.headers["x-request-id"] == "serve-1"
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(line["logger"].startswith("uvicorn") for line in lines), lines
    (access,) = [line for line in lines if line.get("request_id") == "serve-1"]
    assert access["logger"] == "api.access"
    assert access["route"] == "/health"
    assert access["status"] == 200
    assert access["client"] == "127.0.0.1"


async def test_a_pooled_connection_comes_back_without_the_transaction_left_open(
    database: str,
) -> None:
    # The API's pool skips asyncpg's reset query (api.app.keep_session); what asyncpg does
    # on every release anyway must still hold.
    pool = await asyncpg.create_pool(database, min_size=1, max_size=1, reset=keep_session)
    try:
        async with pool.acquire() as connection:
            await connection.execute("CREATE TABLE pooled (n integer)")
            await connection.execute("BEGIN")
            await connection.execute("INSERT INTO pooled VALUES (1)")
        async with pool.acquire() as connection:
            assert not connection.is_in_transaction()
            assert await connection.fetchval("SELECT count(*) FROM pooled") == 0
    finally:
        await pool.close()


def serve_workers(
    database: str, nats_url: str, log_path: Path, workers: int
) -> tuple[subprocess.Popen[bytes], str]:
    """`ledger serve --workers N` on a free port, its output in `log_path`; it and its URL."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LEDGER_")}
    env |= {
        "LEDGER_DATABASE_URL": database,
        "LEDGER_NATS_URL": nats_url,
        "LEDGER_JWT_SECRET": JWT_SECRET,
    }
    script = Path(sys.executable).parent / "ledger"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]
    argv = [*command, "serve", "--workers", str(workers), "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
        )
    return process, f"http://127.0.0.1:{port}"


def worker_pids(process: subprocess.Popen[bytes], count: int, log_path: Path) -> list[int]:
    """The supervisor's worker processes, once `count` of them have started their app."""
    for _ in range(int(WAIT_S / 0.1)):
        started = log_path.read_text().count("Application startup complete")
        workers = [
            child.pid
            for child in psutil.Process(process.pid).children()
            if "spawn_main" in " ".join(child.cmdline())
        ]
        if started == count and len(workers) == count:
            return workers
        time.sleep(0.1)
    raise AssertionError(f"{count} workers not started in {WAIT_S} s:\n{log_path.read_text()}")


def test_ledger_serve_with_workers_serves_from_each_and_stops_them_all(
    database: str, nats_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "serve.log"
    process, url = serve_workers(database, nats_url, log_path, workers=2)
    try:
        wait_for_health(process, url, log_path)
        workers = worker_pids(process, 2, log_path)
        descendants = [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        for _ in range(20):
            # A new connection each time: whichever worker accepts it answers.
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        # The metrics of both workers are in one folder, and any scrape counts them all.
        (folder,) = Path(tempfile.gettempdir()).glob(f"ledger-metrics-{process.pid}-*")
        written = {int(path.stem.rsplit("_", 1)[1]) for path in folder.glob("counter_*.db")}
        assert written == set(workers)
        for _ in range(6):
            assert health_requests(httpx.get(f"{url}/metrics", timeout=5).text) >= 20
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert wait_gone(descendants) == [], log_path.read_text()
    assert set(workers) <= set(descendants)
    assert log_path.read_text().count("Application shutdown complete") == 2
    assert not folder.exists()


def health_requests(metrics: str) -> float:
    """GET /health requests counted in a scrape, over every label set."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ledger_http_requests_total{") and 'path="/health"' in line
    )


def test_workers_of_a_killed_ledger_serve_stop_too(
    database: str, nats_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "serve.log"
    process, url = serve_workers(database, nats_url, log_path, workers=2)
    try:
        wait_for_health(process, url, log_path)
        workers = worker_pids(process, 2, log_path)
    finally:
        # No chance to stop them: the workers must notice their supervisor's death.
        process.kill()
        process.wait()
    assert wait_gone(workers) == [], log_path.read_text()


@pytest.mark.parametrize("workers", ["0", "65", "two"])
def test_ledger_serve_refuses_a_worker_count_out_of_range(workers: str) -> None:
    script = Path(sys.executable).parent / "ledger"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]
    env = {name: value for name, value in os.environ.items() if not name.startswith("LEDGER_")}
    env |= {"LEDGER_DATABASE_URL": "postgresql://nowhere/x", "LEDGER_NATS_URL": "nats://nowhere:1"}
    finished = subprocess.run(
        [*command, "serve", "--workers", workers],
        capture_output=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=WAIT_S,
        check=False,
    )
    assert finished.returncode == 2
    assert b"--workers" in finished.stderr


def wait_for_health(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    for _ in range(int(WAIT_S / 0.1)):
        assert process.poll() is None, log_path.read_text()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"ledger serve not healthy within {WAIT_S} s:\n{log_path.read_text()}")
