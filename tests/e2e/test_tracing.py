"""One trace from the HTTP request to the projection update, against real PostgreSQL and
NATS: the app, the relay and the projection workers of this module share one tracer
provider whose spans land in an in-memory exporter.

    HTTP server span -> command <Type> -> ledger.append -> publish <stream> -> apply <model>
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import nats
import nats.js.errors
import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client as NatsClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from api.app import create_app
from api.tracing import carry_trace_context, http_tracing
from api.users_admin import create_user
from commands import accounts
from commands.bootstrap import bootstrap
from commands.runtime import CommandContext
from ledger.domain.account import account_stream_id
from ledger.domain.user import Role
from ledger.relay import Relay, RelayOptions
from ledger.settings import Settings
from ledger.store import EventStore, NewEvent
from ledger.tracing import context_of_traceparent, records, span_context_of, tracer_provider
from projections.worker import WorkerOptions, run_projections
from tests.conftest import Databases
from tests.e2e.conftest import JWT_SECRET, PASSWORD
from tests.waiting import eventually

WAIT_S_MAX = 30.0
PROJECTIONS = ("users", "accounts")
_names = itertools.count(1)


@dataclass
class Traced:
    """The app, the relay and the workers on one database, all traced into `exporter`."""

    url: str
    pool: asyncpg.Pool
    client: AsyncTestClient[Any]
    nats: NatsClient
    stream: str
    exporter: InMemorySpanExporter
    admin_headers: dict[str, str] = field(default_factory=dict)

    def spans(self, trace_id: int) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.context.trace_id == trace_id]

    async def open_account(self, headers: dict[str, str]) -> tuple[UUID, Any]:
        """A new trader (created outside any trace) and, over HTTP, an account for them."""
        user_id = await create_user(self.url, f"t-{secrets.token_hex(6)}@e.com", PASSWORD, "trader")
        response = await self.client.post(
            "/api/v1/accounts",
            json={"user_id": str(user_id), "currency": "USD"},
            headers={**self.admin_headers, **headers},
        )
        assert response.status_code == 201, response.text
        return account_stream_id(user_id, "USD"), response

    async def projected(self, account_id: UUID) -> None:
        async def found() -> bool:
            return bool(
                await self.pool.fetchval(
                    "SELECT 1 FROM read.accounts WHERE account_id = $1", account_id
                )
            )

        await eventually(found, f"account {account_id} is in the read model", timeout_s=WAIT_S_MAX)

    async def trace_contexts(self, stream_id: UUID) -> list[str | None]:
        rows = await self.pool.fetch(
            "SELECT trace_context FROM ledger.events WHERE originator_id = $1 "
            "ORDER BY originator_version",
            stream_id,
        )
        return [row[0] for row in rows]

    async def message_headers(self, stream_id: UUID) -> list[dict[str, str]]:
        """The headers of the JetStream messages of a stream's events."""
        event_ids = {
            str(row[0])
            for row in await self.pool.fetch(
                "SELECT event_id FROM ledger.events WHERE originator_id = $1", stream_id
            )
        }
        stream = self.nats.jetstream()
        info = await stream.stream_info(self.stream)
        found: list[dict[str, str]] = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            message = await stream.get_msg(self.stream, sequence)
            headers = dict(message.headers or {})
            if headers.get("Nats-Msg-Id") in event_ids:
                found.append(headers)
        assert len(found) == len(event_ids)
        return found


@pytest.fixture(scope="module")
async def traced(databases: Databases, nats_url: str, stream_prefix: str) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    url = await databases.create("tracing")
    stream = f"{stream_prefix}_TRACING_{next(_names)}"
    settings = Settings(database_url=url, nats_url=nats_url, jwt_secret=JWT_SECRET)
    relay = Relay(
        url,
        nats_url,
        RelayOptions(stream_name=stream, subject_prefix=stream),
        tracer_provider=provider,
    )
    options = WorkerOptions(
        stream_name=stream,
        subject_prefix=stream,
        consumer_prefix=f"{stream}-projection",
        fetch_batch=100,
        fetch_timeout_s=0.2,
        standby_retry_s=0.1,
    )
    stop = asyncio.Event()
    client = await nats.connect(nats_url)
    tasks = [asyncio.create_task(relay.run(stop))]

    async def stream_exists() -> bool:
        try:
            await client.jetstream().stream_info(stream)
        except nats.js.errors.NotFoundError:
            return False
        return True

    # The workers bind to the stream, which the relay creates once it leads.
    await eventually(stream_exists, f"the relay has created {stream}", timeout_s=WAIT_S_MAX)
    worker = run_projections(
        url,
        nats_url,
        PROJECTIONS,
        stream_name=stream,
        stop=stop,
        options=options,
        tracer_provider=provider,
    )
    tasks.append(asyncio.create_task(worker))
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        async with AsyncTestClient(app=create_app(settings, tracer_provider=provider)) as http:
            ready = Traced(url, pool, http, client, stream, exporter)
            email = f"admin-{secrets.token_hex(6)}@e.com"
            await create_user(url, email, PASSWORD, Role.ADMIN)
            signed_in = await http.post(
                "/api/v1/auth/token", json={"email": email, "password": PASSWORD}
            )
            assert signed_in.status_code == 200, signed_in.text
            ready.admin_headers = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
            yield ready
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=15)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(stream)
        await client.close()
        await pool.close()
        provider.shutdown()


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, [span.name for span in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def applied_in(traced: Traced, trace_id: int) -> list[ReadableSpan]:
    """The trace's spans once the accounts projection's apply span is among them."""

    async def applied() -> bool:
        return any(span.name == "apply accounts" for span in traced.spans(trace_id))

    await eventually(
        applied, f"trace {trace_id:032x} reaches the accounts projection", timeout_s=WAIT_S_MAX
    )
    return traced.spans(trace_id)


async def test_one_trace_runs_from_the_http_request_to_the_projection_update(
    traced: Traced,
) -> None:
    # The caller is traced too: its traceparent is the root of the whole trace.
    caller_trace, caller_span = int(uuid4().hex, 16), int(secrets.token_hex(8), 16) | 1
    traceparent = f"00-{caller_trace:032x}-{caller_span:016x}-01"
    account_id, _ = await traced.open_account({"traceparent": traceparent})
    await traced.projected(account_id)
    spans = await applied_in(traced, caller_trace)

    http = only(spans, "POST /api/v1/accounts")
    command = only(spans, "command OpenAccount")
    append = only(spans, "ledger.append")
    publishes = [span for span in spans if span.kind is SpanKind.PRODUCER]
    applies = [span for span in spans if span.name == "apply accounts"]
    assert http.kind is SpanKind.SERVER
    assert parent_of(http) == caller_span
    assert http.attributes is not None
    assert http.attributes["http.route"] == "/api/v1/accounts"
    assert parent_of(command) == http.context.span_id
    assert command.attributes is not None
    assert command.attributes["ledger.outcome"] == "appended"
    assert command.attributes["ledger.streams"] == (str(account_id),)
    assert parent_of(append) == command.context.span_id
    assert publishes
    assert {parent_of(span) for span in publishes} == {append.context.span_id}
    assert {span.name for span in publishes} == {f"publish {traced.stream}"}
    # The apply span hangs below a publish span; the trace's other messages in the
    # batch, if any, are its links.
    assert len(applies) == 1
    apply = applies[0]
    assert apply.kind is SpanKind.CONSUMER
    publish_ids = {span.context.span_id for span in publishes}
    assert parent_of(apply) in publish_ids
    assert {link.context.span_id for link in apply.links} <= publish_ids
    assert apply.attributes is not None
    assert apply.attributes["ledger.projection"] == "accounts"
    # The users projection handles none of this trace's events: no span for it.
    assert not [span for span in spans if span.name == "apply users"]

    # Stored: the append span's context; sent: the publish span's.
    stored = f"00-{caller_trace:032x}-{append.context.span_id:016x}-01"
    assert await traced.trace_contexts(account_id) == [stored]
    for headers in await traced.message_headers(account_id):
        assert headers["traceparent"] in {
            f"00-{caller_trace:032x}-{span_id:016x}-01" for span_id in publish_ids
        }


async def test_a_request_without_a_traceparent_starts_its_own_trace(traced: Traced) -> None:
    request_id = f"req-{secrets.token_hex(8)}"
    account_id, _ = await traced.open_account({"X-Request-ID": request_id})
    await traced.projected(account_id)
    http = [
        span
        for span in traced.exporter.get_finished_spans()
        if span.attributes is not None and span.attributes.get("ledger.request_id") == request_id
    ]
    assert len(http) == 1
    assert http[0].parent is None
    spans = await applied_in(traced, http[0].context.trace_id)
    assert {"command OpenAccount", "ledger.append", "apply accounts"} <= {s.name for s in spans}

    # Liveness is not traced.
    assert (await traced.client.get("/health")).status_code == 200
    assert not [s for s in traced.exporter.get_finished_spans() if "/health" in s.name]
    # A route with a path parameter names its span by the template, not by the id.
    deposit_id = f"req-{secrets.token_hex(8)}"
    deposited = await traced.client.post(
        f"/api/v1/accounts/{account_id}/deposits",
        json={"amount": "10.00"},
        headers={**traced.admin_headers, "X-Request-ID": deposit_id},
    )
    assert deposited.status_code == 201, deposited.text
    (server,) = [
        span
        for span in traced.exporter.get_finished_spans()
        if span.attributes is not None and span.attributes.get("ledger.request_id") == deposit_id
    ]
    assert server.name == "POST /api/v1/accounts/{account_id}/deposits"


async def test_a_malformed_traceparent_header_is_ignored_not_an_error(traced: Traced) -> None:
    request_id = f"req-{secrets.token_hex(8)}"
    bad = "00-not-a-trace-context-01"
    account_id, response = await traced.open_account(
        {"traceparent": bad, "X-Request-ID": request_id}
    )
    assert response.status_code == 201
    await traced.projected(account_id)
    http = [
        span
        for span in traced.exporter.get_finished_spans()
        if span.attributes is not None and span.attributes.get("ledger.request_id") == request_id
    ]
    assert len(http) == 1
    assert http[0].parent is None
    spans = await applied_in(traced, http[0].context.trace_id)
    assert "apply accounts" in {span.name for span in spans}
    (stored,) = await traced.trace_contexts(account_id)
    assert stored is not None
    assert stored.startswith(f"00-{http[0].context.trace_id:032x}-")


async def test_events_appended_without_a_trace_have_no_context_and_flow_as_before(
    traced: Traced,
) -> None:
    # The command side without a tracer provider, as the benchmarks and the CLI use it.
    user_id = await create_user(traced.url, f"t-{secrets.token_hex(6)}@e.com", PASSWORD, "trader")
    ledger = bootstrap(traced.pool)
    command = accounts.OpenAccount(user_id=user_id, currency="EUR")
    await accounts.open_account(ledger, command, CommandContext(actor="test"))
    account_id = account_stream_id(user_id, "EUR")
    await traced.projected(account_id)
    assert await traced.trace_contexts(account_id) == [None]
    assert await traced.trace_contexts(user_id) == [None]
    for headers in await traced.message_headers(account_id):
        assert "traceparent" not in headers
    event_ids = {
        str(row[0])
        for row in await traced.pool.fetch(
            "SELECT event_id FROM ledger.events WHERE originator_id = $1", account_id
        )
    }
    published = {
        span.attributes.get("messaging.message.id")
        for span in traced.exporter.get_finished_spans()
        if span.attributes is not None
    }
    assert not event_ids & published  # No publish span for an untraced event.


async def test_a_malformed_stored_trace_context_is_ignored_not_an_error(traced: Traced) -> None:
    stream_id = uuid4()
    probe = NewEvent(stream_id=stream_id, stream_type="probe", topic="tests.e2e:Probe", data={})
    await EventStore(traced.pool).append([probe], {stream_id: 0}, trace_context="00-garbage-01")
    assert await traced.trace_contexts(stream_id) == ["00-garbage-01"]

    async def checkpointed() -> bool:
        sequence = await traced.pool.fetchval(
            "SELECT s.sequence FROM ledger.sequence s JOIN ledger.events e "
            "ON e.notification_id = s.position WHERE e.originator_id = $1",
            stream_id,
        )
        if sequence is None:
            return False
        checkpoints = await traced.pool.fetch(
            "SELECT sequence FROM read.checkpoints WHERE projection = ANY($1::text[])",
            list(PROJECTIONS),
        )
        return len(checkpoints) == len(PROJECTIONS) and all(
            row[0] >= sequence for row in checkpoints
        )

    await eventually(checkpointed, "every projection is past the probe event", timeout_s=WAIT_S_MAX)
    (headers,) = await traced.message_headers(stream_id)
    assert "traceparent" not in headers
    failing = await traced.pool.fetchval("SELECT count(*) FROM read.checkpoints WHERE failing")
    assert failing == 0


async def test_a_provider_that_records_nothing_still_carries_the_callers_trace_to_the_events(
    databases: Databases, nats_url: str
) -> None:
    # `ledger serve` with no exporter and no sampler: no HTTP span, only the caller's context.
    url = await databases.create("tracing_off")
    settings = Settings(database_url=url, nats_url=nats_url, jwt_secret=JWT_SECRET)
    provider = tracer_provider(settings, "api", environ={})
    assert not records(provider)
    tracing = http_tracing(provider)
    assert (tracing.plugins, tracing.middleware) == ([], [carry_trace_context])
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        async with AsyncTestClient(app=create_app(settings, tracer_provider=provider)) as http:
            email = f"admin-{secrets.token_hex(6)}@e.com"
            await create_user(url, email, PASSWORD, Role.ADMIN)
            signed_in = await http.post(
                "/api/v1/auth/token", json={"email": email, "password": PASSWORD}
            )
            assert signed_in.status_code == 200, signed_in.text
            admin = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}

            async def stored_context(headers: dict[str, str]) -> str:
                email = f"t-{secrets.token_hex(6)}@e.com"
                user_id = await create_user(url, email, PASSWORD, "trader")
                response = await http.post(
                    "/api/v1/accounts",
                    json={"user_id": str(user_id), "currency": "USD"},
                    headers={**admin, **headers},
                )
                assert response.status_code == 201, response.text
                stored = await pool.fetchval(
                    "SELECT trace_context FROM ledger.events WHERE originator_id = $1",
                    account_stream_id(user_id, "USD"),
                )
                assert isinstance(stored, str)
                return stored

            caller_trace = uuid4().hex
            traceparent = f"00-{caller_trace}-{secrets.token_hex(8)}-01"
            state = "vendor=opaque"
            carried = await stored_context({"traceparent": traceparent, "tracestate": state})
            assert carried.startswith(f"00-{caller_trace}-")
            # Without a caller's context (or with a malformed one) the command starts one.
            for headers in ({}, {"traceparent": "00-garbage-01"}):
                started = await stored_context(headers)
                assert caller_trace not in started
                context = context_of_traceparent(started)
                assert context is not None
                assert span_context_of(context).is_valid
    finally:
        await pool.close()
        provider.shutdown()
