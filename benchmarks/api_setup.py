"""The market a bench-api run trades in, set up through the API itself, as clients would.

An admin and an execution venue from `ledger users create` (password on stdin); the admin
lists the instruments; each trader registers, signs in, gets an account opened and funded
by the admin, and holds a position in every instrument (a buy of one lot, filled by the
venue), so that a trader's positions page has rows to show.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, TypeVar
from uuid import uuid4

from benchmarks.http_load import Connection, HttpError, encode_request
from benchmarks.processes import Processes

INSTRUMENTS: Final = 4
CASH: Final = "1000000000"
PRICE: Final = "10.00"
SETUP_CONCURRENCY: Final = 16
USER_CREATE_TIMEOUT_S: Final = 120.0

T = TypeVar("T")


class Trader(NamedTuple):
    email: str
    user_id: str
    account_id: str
    token: str


class Market(NamedTuple):
    instrument_ids: list[str]
    traders: list[Trader]


class Api:
    """JSON calls to the API on connections of its own (one per concurrent caller)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[Connection] = []

    async def call(
        self, method: str, path: str, *, token: str | None = None, body: Any = None, status: int
    ) -> Any:
        """The decoded answer; raises unless it has `status`."""
        connection = self._idle.pop() if self._idle else await Connection.open(self.host, self.port)
        request = encode_request(method, path, host=self.host, token=token, body=body)
        try:
            response = await connection.exchange(request)
        except BaseException:
            await connection.close()
            raise
        self._idle.append(connection)
        if response.status != status:
            raise HttpError(f"{method} {path}: {response.status} {response.body[:500]!r}")
        return response.json() if response.body else None

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(connection.close() for connection in idle))


async def bounded(concurrency: int, works: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run `works` with at most `concurrency` at a time; their results in order."""
    limit = asyncio.Semaphore(concurrency)

    async def one(work: Callable[[], Awaitable[T]]) -> T:
        async with limit:
            return await work()

    return list(await asyncio.gather(*(one(work) for work in works)))


async def sign_in(api: Api, email: str, password: str) -> str:
    pair = await api.call(
        "POST", "/api/v1/auth/token", body={"email": email, "password": password}, status=200
    )
    token: str = pair["access_token"]
    return token


def created_user(processes: Processes, role: str, password: str) -> str:
    """A user of `role` made by `ledger users create`, as an operator bootstraps one."""
    email = f"{role}-{secrets.token_hex(4)}@bench.example.com"
    processes.run(
        f"users-create-{role}",
        "users",
        "create",
        "--email",
        email,
        "--role",
        role,
        stdin=f"{password}\n".encode(),
        timeout_s=USER_CREATE_TIMEOUT_S,
    )
    return email


async def set_up_market(api: Api, processes: Processes, traders: int) -> Market:
    password = f"bench-{secrets.token_hex(8)}"
    admin = await sign_in(api, created_user(processes, "admin", password), password)
    venue = await sign_in(api, created_user(processes, "execution", password), password)
    instrument_ids = [await list_instrument(api, admin) for _ in range(INSTRUMENTS)]
    made = await bounded(
        SETUP_CONCURRENCY,
        [lambda: funded_trader(api, admin, password) for _ in range(traders)],
    )
    await bounded(
        SETUP_CONCURRENCY,
        [
            functools.partial(bought_and_filled, api, trader, instrument_id, venue)
            for trader in made
            for instrument_id in instrument_ids
        ],
    )
    return Market(instrument_ids, made)


async def list_instrument(api: Api, admin: str) -> str:
    listed = await api.call(
        "POST",
        "/api/v1/instruments",
        token=admin,
        body={
            "symbol": f"B{secrets.token_hex(4).upper()}",
            "currency": "USD",
            "tick_size": "0.01",
            "lot_size": "1",
            "price_precision": 2,
            "quantity_precision": 0,
        },
        status=201,
    )
    instrument_id: str = listed["instrument_id"]
    return instrument_id


async def funded_trader(api: Api, admin: str, password: str) -> Trader:
    email = f"trader-{uuid4().hex[:12]}@bench.example.com"
    registered = await api.call(
        "POST",
        "/api/v1/auth/register",
        body={"email": email, "password": password, "display_name": "Bench"},
        status=201,
    )
    user_id = registered["user_id"]
    opened = await api.call(
        "POST",
        "/api/v1/accounts",
        token=admin,
        body={"user_id": user_id, "currency": "USD"},
        status=201,
    )
    account_id = opened["account_id"]
    await api.call(
        "POST",
        f"/api/v1/accounts/{account_id}/deposits",
        token=admin,
        body={"amount": CASH},
        status=201,
    )
    return Trader(email, user_id, account_id, await sign_in(api, email, password))


def order_body(trader: Trader, instrument_id: str) -> dict[str, str]:
    """A buy limit of one lot at a price the cash covers: accepted, never filled."""
    return {
        "account_id": trader.account_id,
        "instrument_id": instrument_id,
        "side": "buy",
        "order_type": "limit",
        "quantity": "1",
        "limit_price": PRICE,
    }


async def bought_and_filled(api: Api, trader: Trader, instrument_id: str, venue: str) -> None:
    placed = await api.call(
        "POST", "/api/v1/orders", token=trader.token, body=order_body(trader, instrument_id),
        status=202,
    )  # fmt: skip
    if placed["status"] != "accepted":
        raise HttpError(f"a setup order was not accepted: {placed}")
    await api.call(
        "POST",
        f"/api/v1/orders/{placed['order_id']}/fills",
        token=venue,
        body={
            "fill_id": uuid4().hex,
            "quantity": "1",
            "price": PRICE,
            "fee": "0",
            "venue": "BENCH",
            "executed_at": datetime.now(UTC).isoformat(),
        },
        status=201,
    )
