"""GET /events/live over a real HTTP server: order, resume without gap or duplicate, live
tail, filters, heartbeat, roles, limits, and ends (client gone, token expired, shutdown)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any, Final

import httpx
import jwt
import msgspec
import pytest

from api.app import create_app
from api.live import LiveStreams, live_streams_of
from api.tokens import TokenIssuer, utc_now
from ledger.domain.user import Role
from ledger.settings import Settings
from tests.conftest import Databases
from tests.e2e.conftest import JWT_SECRET
from tests.e2e.served import PASSWORD, ServedApi
from tests.sequencing import sequence_all

READ_TIMEOUT_S: Final = 20.0
LIVE_PATH: Final = "/api/v1/events/live"


class Message(msgspec.Struct):
    """One SSE message: its fields, or a comment line alone."""

    id: int | None = None
    data: str | None = None
    comment: str | None = None
    retry: int | None = None

    def event(self) -> dict[str, Any]:
        assert self.data is not None
        decoded: dict[str, Any] = msgspec.json.decode(self.data)
        return decoded


async def messages(response: httpx.Response) -> AsyncIterator[Message]:
    """Parse the text/event-stream of a response as it arrives."""
    current = Message()
    async for line in response.aiter_lines():
        if line == "":
            if current != Message():
                yield current
            current = Message()
        elif line.startswith(":"):
            current.comment = line[1:].strip()
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                current.id = int(value)
            elif name == "data":
                current.data = value if current.data is None else f"{current.data}\n{value}"
            elif name == "retry":
                current.retry = int(value)


class Ledger:
    """The served API, an admin to append events with, and readers of each role."""

    def __init__(self, served: ServedApi) -> None:
        self.served = served
        self.admin_id, self.admin = served.token(Role.ADMIN)
        self.auditor = served.token(Role.AUDITOR)[1]
        self.analyst = served.token(Role.ANALYST)[1]
        self.trader_id, self.trader = served.token(Role.TRADER)

    @staticmethod
    def headers(token: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", **extra}

    async def account_with_deposits(self, deposits: int) -> str:
        async with httpx.AsyncClient(base_url=self.served.url, timeout=30.0) as client:
            # A trader of its own: a user has one account per currency.
            registered = await client.post(
                "/api/v1/auth/register",
                json={"email": f"owner-{secrets.token_hex(6)}@example.com", "password": PASSWORD},
            )
            assert registered.status_code == 201, registered.text
            opened = await client.post(
                "/api/v1/accounts",
                json={"user_id": registered.json()["user_id"], "currency": "USD"},
                headers=self.headers(self.admin),
            )
            assert opened.status_code == 201, opened.text
            account_id: str = opened.json()["account_id"]
            await self.deposit(client, account_id, deposits)
        return account_id

    async def deposit(self, client: httpx.AsyncClient, account_id: str, count: int) -> None:
        for number in range(count):
            deposited = await client.post(
                f"/api/v1/accounts/{account_id}/deposits",
                json={"amount": f"{number + 1}.00"},
                headers=self.headers(self.admin),
            )
            assert deposited.status_code == 201, deposited.text

    async def sequenced_head(self) -> int:
        assert self.served.settings.database_url is not None
        return await sequence_all(self.served.settings.database_url)


@pytest.fixture(scope="module")
async def live_settings(databases: Databases, nats_url: str) -> Settings:
    url = await databases.create("live")
    return Settings(database_url=url, nats_url=nats_url, jwt_secret=JWT_SECRET)


@pytest.fixture(scope="module")
def served(live_settings: Settings) -> Iterator[ServedApi]:
    app = create_app(live_settings)
    app.state["live_streams"] = LiveStreams(heartbeat_s=0.2, poll_wait_max_s=0.1)
    server = ServedApi(app, live_settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ledger(served: ServedApi) -> Ledger:
    return Ledger(served)


def streams(served: ServedApi) -> LiveStreams:
    return live_streams_of(served.app)


async def read_events(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, Any], until: int
) -> list[Message]:
    """Events of a live stream until one with sequence `until`; the stream is then left."""
    found: list[Message] = []
    async with asyncio.timeout(READ_TIMEOUT_S):
        async with client.stream("GET", LIVE_PATH, headers=headers, params=params) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for message in messages(response):
                if message.id is None:
                    continue
                found.append(message)
                if message.id >= until:
                    break
    return found


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.ANALYST])
async def test_a_reconnect_resumes_without_gap_or_duplicate(
    served: ServedApi, ledger: Ledger, role: Role
) -> None:
    token = ledger.auditor if role is Role.AUDITOR else ledger.analyst
    start = await ledger.sequenced_head()
    account_id = await ledger.account_with_deposits(5)
    first_head = await ledger.sequenced_head()
    middle = start + (first_head - start) // 2
    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as client:
        # The first connection leaves halfway; the reconnect names the last id it saw.
        first = await read_events(client, ledger.headers(token), {"after": start}, middle)
        await ledger.deposit(client, account_id, 3)
        head = await ledger.sequenced_head()
        # `after` is stale on purpose: Last-Event-ID wins, as a browser would send both.
        resumed = await read_events(
            client,
            ledger.headers(token, **{"Last-Event-ID": str(first[-1].id)}),
            {"after": start},
            head,
        )
    ids = [message.id for message in first + resumed]
    assert ids == list(range(start + 1, head + 1))
    events = [message.event() for message in first + resumed]
    assert [event["sequence"] for event in events] == ids
    mine = [event for event in events if event["stream_id"] == account_id]
    assert [event["version"] for event in mine] == list(range(1, 10))


async def test_events_arrive_live_once_numbered(served: ServedApi, ledger: Ledger) -> None:
    start = await ledger.sequenced_head()
    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as client:
        params = {"after": start}
        async with asyncio.timeout(READ_TIMEOUT_S):
            async with client.stream(
                "GET", LIVE_PATH, headers=ledger.headers(ledger.auditor), params=params
            ) as response:
                assert response.status_code == 200
                stream = messages(response)
                opening = await anext(stream)
                assert opening.retry is not None  # The stream is open: now append.
                account_id = await ledger.account_with_deposits(2)
                head = await ledger.sequenced_head()
                seen: list[Message] = []
                async for message in stream:
                    if message.id is not None:
                        seen.append(message)
                    if seen and seen[-1].id == head:
                        break
    assert [m.id for m in seen] == list(range(start + 1, head + 1))
    assert {m.event()["stream_id"] for m in seen} >= {account_id}


async def test_filters_narrow_the_stream(served: ServedApi, ledger: Ledger) -> None:
    start = await ledger.sequenced_head()
    wanted = await ledger.account_with_deposits(3)
    await ledger.account_with_deposits(2)  # Another stream's events, to be filtered out.
    head = await ledger.sequenced_head()
    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as client:
        params = {
            "after": start,
            "stream_id": wanted,
            "type": "ledger.domain.account:CashDeposited",
        }
        headers = ledger.headers(ledger.analyst)
        found: list[Message] = []
        async with asyncio.timeout(READ_TIMEOUT_S):
            async with client.stream("GET", LIVE_PATH, headers=headers, params=params) as response:
                async for message in messages(response):
                    if message.id is not None:
                        found.append(message)
                    if len(found) == 3:
                        break
    events = [message.event() for message in found]
    assert [event["version"] for event in events] == [2, 3, 4]
    assert all(event["stream_id"] == wanted for event in events)
    assert all(start < (message.id or 0) <= head for message in found)


async def test_a_quiet_stream_sends_heartbeats(served: ServedApi, ledger: Ledger) -> None:
    head = await ledger.sequenced_head()
    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as client:
        async with asyncio.timeout(READ_TIMEOUT_S):
            async with client.stream(
                "GET", LIVE_PATH, headers=ledger.headers(ledger.auditor), params={"after": head}
            ) as response:
                async for message in messages(response):
                    assert message.id is None, "nothing was appended"
                    if message.comment == "heartbeat":
                        break


async def test_streams_end_when_their_clients_leave(served: ServedApi, ledger: Ledger) -> None:
    head = await ledger.sequenced_head()
    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as client:
        for _ in range(3):
            async with client.stream(
                "GET", LIVE_PATH, headers=ledger.headers(ledger.auditor), params={"after": head}
            ) as response:
                assert response.status_code == 200
                opened = messages(response)
                await anext(opened)
                assert streams(served).open >= 1
    # Every stream gave its place back once its client went away (bounded wait, no timing).
    async with asyncio.timeout(READ_TIMEOUT_S):
        while streams(served).open:  # noqa: ASYNC110 (a count to watch, not an event)
            await asyncio.sleep(0.05)


async def test_a_stream_ends_when_its_token_expires(served: ServedApi, ledger: Ledger) -> None:
    claims = jwt.decode(ledger.auditor, options={"verify_signature": False})
    issuer = TokenIssuer(JWT_SECRET, access_ttl=timedelta(seconds=2))
    short = issuer.issue(claims["sub"], Role.AUDITOR, claims["token_version"], now=utc_now())
    head = await ledger.sequenced_head()
    comments: list[str] = []
    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as client:
        async with asyncio.timeout(READ_TIMEOUT_S):
            async with client.stream(
                "GET", LIVE_PATH, headers=ledger.headers(short), params={"after": head}
            ) as response:
                assert response.status_code == 200
                # The loop ends only because the server ends the stream.
                comments = [m.comment async for m in messages(response) if m.comment]
    assert comments[-1] == "the access token expired; reconnect"


@pytest.mark.parametrize("role", [Role.ADMIN, Role.TRADER, Role.EXECUTION])
async def test_other_roles_cannot_follow_the_log(
    served: ServedApi, ledger: Ledger, role: Role
) -> None:
    token = ledger.trader if role is Role.TRADER else served.token(role)[1]
    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as client:
        response = await client.get(LIVE_PATH, headers=ledger.headers(token))
        assert response.status_code == 403
        assert response.json()["code"] == "FORBIDDEN"
        anonymous = await client.get(LIVE_PATH)
        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == "TOKEN_MISSING"


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"Last-Event-ID": "seven"}, {}),
        ({"Last-Event-ID": "-1"}, {}),
        ({}, {"after": "-1"}),
        ({}, {"stream_id": "nope"}),
        ({}, {"actor": "a\x00"}),
    ],
)
async def test_bad_input_is_a_400(
    served: ServedApi, ledger: Ledger, headers: dict[str, str], params: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30.0) as client:
        response = await client.get(
            LIVE_PATH, headers=ledger.headers(ledger.auditor, **headers), params=params
        )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "VALIDATION_ERROR"


async def test_one_stream_too_many_is_a_503(served: ServedApi, ledger: Ledger) -> None:
    # Room for one stream alone; streams of earlier tests may still be ending elsewhere.
    before = streams(served)
    served.app.state["live_streams"] = LiveStreams(streams_max=1)
    head = await ledger.sequenced_head()
    headers = ledger.headers(ledger.auditor)
    try:
        async with (
            asyncio.timeout(READ_TIMEOUT_S),
            httpx.AsyncClient(base_url=served.url, timeout=30.0) as client,
            client.stream("GET", LIVE_PATH, headers=headers, params={"after": head}) as first,
        ):
            assert first.status_code == 200
            # Keep the parser referenced: a dropped one closes the response it reads.
            opened = messages(first)
            await anext(opened)
            async with client.stream("GET", LIVE_PATH, headers=headers) as refused:
                assert refused.status_code == 503
                problem = msgspec.json.decode(await refused.aread())
        assert problem["code"] == "LIVE_STREAMS_BUSY"
        assert refused.headers["retry-after"] == "5"
    finally:
        served.app.state["live_streams"] = before


async def test_a_server_shutdown_ends_open_streams(live_settings: Settings, ledger: Ledger) -> None:
    # A server of its own, stopped while a stream is open: the stream ends with a last
    # comment, the server stops without waiting out its graceful timeout, nothing is left.
    app = create_app(live_settings)
    server = ServedApi(app, live_settings).start()
    head = await ledger.sequenced_head()
    comments: list[str] = []
    stopping: asyncio.Task[None] | None = None
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
            async with asyncio.timeout(READ_TIMEOUT_S):
                async with client.stream(
                    "GET", LIVE_PATH, headers=ledger.headers(ledger.auditor), params={"after": head}
                ) as response:
                    stream = messages(response)
                    await anext(stream)
                    stopping = asyncio.create_task(asyncio.to_thread(server.stop))
                    comments = [m.comment async for m in stream if m.comment]
                    await stopping
    finally:
        await (asyncio.to_thread(server.stop) if stopping is None else stopping)
    assert comments[-1] == "the server is shutting down; reconnect"
    assert live_streams_of(app).open == 0
