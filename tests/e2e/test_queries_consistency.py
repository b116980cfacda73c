"""consistent_with when the read side is behind: a bounded wait, then a retryable 503.

An app and a database of this module's own, with a short wait (0.3 s), so that the relay
and the projection workers can be held back without slowing the other tests.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.consistency import decode_token
from ledger.domain.user import Role
from ledger.settings import Settings
from projections.notify import CHANNEL, parse
from tests.conftest import Databases
from tests.e2e.conftest import JWT_SECRET, Api, User, assert_problem
from tests.e2e.projecting import Pipeline

WAIT_S = 0.3
# Retries of a 503 before giving up: each costs WAIT_S, so about 30 s in all.
RETRIES_MAX = 100


class Stalled:
    def __init__(self, api: Api, pipeline: Pipeline) -> None:
        self.api = api
        self.pipeline = pipeline


@pytest.fixture(scope="module")
async def stalled(
    databases: Databases, nats_url: str, stream_prefix: str
) -> AsyncIterator[Stalled]:
    settings = Settings(
        database_url=await databases.create("queries_wait"),
        nats_url=nats_url,
        jwt_secret=JWT_SECRET,
        consistency_wait_s=WAIT_S,
    )
    assert settings.database_url is not None
    pipeline = Pipeline(settings.database_url, nats_url, f"{stream_prefix}_QUERIES_WAIT")
    try:
        async with AsyncTestClient(app=create_app(settings)) as client:
            yield Stalled(Api(client, settings), pipeline)
    finally:
        await pipeline.stop()


async def _list_instrument(api: Api, admin: User) -> tuple[str, str]:
    response = await api.client.post(
        "/api/v1/instruments",
        json={
            "symbol": f"W{secrets.token_hex(3).upper()}",
            "currency": "USD",
            "tick_size": "0.01",
            "lot_size": "1",
            "price_precision": 2,
            "quantity_precision": 0,
        },
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["instrument_id"], body["consistency_token"]


async def _read_until_answered(api: Api, path: str, user: User, token: str) -> Any:
    """What a client does with CONSISTENCY_TIMEOUT: retry (bounded) until answered."""
    for _ in range(RETRIES_MAX):
        response = await api.client.get(
            path, params={"consistent_with": token}, headers=user.headers
        )
        if response.status_code != 503:
            return response
        assert_problem(response, 503, "CONSISTENCY_TIMEOUT")
    raise AssertionError(f"{path} still behind after {RETRIES_MAX} retries")


async def test_a_query_waits_for_projections_that_are_stopped(stalled: Stalled) -> None:
    api = stalled.api
    admin = await api.user(Role.ADMIN)
    trader = await api.user(Role.TRADER)

    # Nothing runs: the event is not even numbered yet.
    instrument_id, token = await _list_instrument(api, admin)
    path = f"/api/v1/instruments/{instrument_id}"
    response = await api.client.get(path, params={"consistent_with": token}, headers=trader.headers)
    body = assert_problem(response, 503, "CONSISTENCY_TIMEOUT")
    assert response.headers["retry-after"] == "1"
    assert "instruments" in body["detail"]
    # Without a token the read answers at once, from a read model that is behind.
    assert_problem(await api.client.get(path, headers=trader.headers), 404, "INSTRUMENT_NOT_FOUND")

    # The relay and the workers start: the same query is answered with the write.
    await stalled.pipeline.start()
    answered = await _read_until_answered(api, path, trader, token)
    assert answered.status_code == 200, answered.text
    assert answered.json()["instrument_id"] == instrument_id

    # The workers stop while the relay goes on numbering: sequenced, not applied.
    await stalled.pipeline.stop_workers()
    second_id, second_token = await _list_instrument(api, admin)
    second = f"/api/v1/instruments/{second_id}"
    response = await api.client.get(
        second, params={"consistent_with": second_token}, headers=trader.headers
    )
    assert_problem(response, 503, "CONSISTENCY_TIMEOUT")
    # An earlier token is still satisfied at once.
    response = await api.client.get(path, params={"consistent_with": token}, headers=trader.headers)
    assert response.status_code == 200, response.text

    await stalled.pipeline.start_workers()
    answered = await _read_until_answered(api, second, trader, second_token)
    assert answered.status_code == 200, answered.text
    assert answered.json()["instrument_id"] == second_id


async def test_the_503_is_a_problem_document(stalled: Stalled) -> None:
    """A list route waits like a get route, and CONSISTENCY_TIMEOUT is problem+json."""
    api = stalled.api
    admin = await api.user(Role.ADMIN)
    await stalled.pipeline.stop_workers()
    instrument_id, token = await _list_instrument(api, admin)
    response = await api.client.get(
        "/api/v1/instruments", params={"consistent_with": token}, headers=admin.headers
    )
    body = assert_problem(response, 503, "CONSISTENCY_TIMEOUT")
    assert msgspec.json.decode(response.content)["type"].endswith("CONSISTENCY_TIMEOUT")
    assert body["instance"] == "/api/v1/instruments"
    assert instrument_id not in response.text


async def test_the_workers_announce_what_they_applied(stalled: Stalled) -> None:
    """Each worker NOTIFYs its checkpoint after a batch: what wakes the waiting queries."""
    api = stalled.api
    assert api.settings.database_url is not None
    notices: list[str] = []
    listener = await asyncpg.connect(api.settings.database_url)
    try:
        await listener.add_listener(CHANNEL, lambda *args: notices.append(args[3]))
        await stalled.pipeline.start_workers()  # the previous test stopped them
        admin = await api.user(Role.ADMIN)
        instrument_id, token = await _list_instrument(api, admin)
        answered = await _read_until_answered(
            api, f"/api/v1/instruments/{instrument_id}", admin, token
        )
        assert answered.status_code == 200, answered.text
        sequence = await listener.fetchval(
            "SELECT sequence FROM ledger.sequence WHERE position = $1",
            decode_token(token).position,
        )
        for _ in range(RETRIES_MAX):
            announced = [parse(notice) for notice in notices]
            if any(
                item is not None and item[0] == "instruments" and item[1] >= sequence
                for item in announced
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no notice of instruments at {sequence}: {notices}")
    finally:
        await listener.close()
