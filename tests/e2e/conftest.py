"""The API over HTTP against real PostgreSQL and NATS: one app and database per session.

Tests sign up their own users (unique emails), so they share the app without seeing
each other's state. `Api` wraps the client with the few helpers every test needs.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.passwords import HashCost
from api.users_admin import create_user
from ledger.domain.user import Role
from ledger.settings import Settings
from tests.conftest import Databases

PASSWORD = "correct horse battery staple"
JWT_SECRET = secrets.token_urlsafe(48)
# argon2's cheapest cost: the tests protect nothing, and the default cost (about 64 MiB
# and tens of milliseconds a hash) made the suite spend most of its time hashing.
TEST_HASH_COST = HashCost(time_cost=1, memory_kib=8, parallelism=1)
# The shared app must never throttle the suite; tests/e2e/test_ops.py tests the limits.
RATE_LIMIT_PER_MINUTE_MAX = 1_000_000
# Pages a list may take before `Api.pages` calls it endless.
PAGES_MAX = 1_000


class Api:
    """The test client and a way to make signed-in users of any role."""

    def __init__(self, client: AsyncTestClient[Any], settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._admin: User | None = None

    @staticmethod
    def new_email(label: str = "user") -> str:
        return f"{label}-{secrets.token_hex(6)}@example.com"

    async def user(self, role: Role) -> User:
        email = self.new_email(role.value)
        if role is Role.TRADER:
            response = await self.client.post(
                "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
            )
            assert response.status_code == 201, response.text
            user_id = response.json()["user_id"]
        else:
            assert self.settings.database_url is not None
            user_id = str(
                await create_user(
                    self.settings.database_url, email, PASSWORD, role, cost=TEST_HASH_COST
                )
            )
        tokens = await self.sign_in(email)
        return User(user_id, email, role, tokens["access_token"], tokens["refresh_token"])

    async def admin(self) -> User:
        """One admin for the helpers below (signed in once)."""
        if self._admin is None:
            self._admin = await self.user(Role.ADMIN)
        return self._admin

    async def account_with_deposits(self, deposits: int | Sequence[str]) -> tuple[User, str]:
        """A new trader and its USD account, opened by an admin, after deposits of
        `deposits` (the amounts, or a count: 1.00, 2.00, ...)."""
        amounts = (
            [f"{number + 1}.00" for number in range(deposits)]
            if isinstance(deposits, int)
            else list(deposits)
        )
        admin = await self.admin()
        trader = await self.user(Role.TRADER)
        opened = await self.client.post(
            "/api/v1/accounts",
            json={"user_id": trader.user_id, "currency": "USD"},
            headers=admin.headers,
        )
        assert opened.status_code == 201, opened.text
        account_id: str = opened.json()["account_id"]
        for amount in amounts:
            deposited = await self.client.post(
                f"/api/v1/accounts/{account_id}/deposits",
                json={"amount": amount},
                headers=admin.headers,
            )
            assert deposited.status_code == 201, deposited.text
        return trader, account_id

    async def pages(self, path: str, reader: User, key: str, **params: Any) -> list[Any]:
        """Every item of a cursor-paged list under `key`, following next_cursor, each page
        a 200; fails if the list does not end within PAGES_MAX pages."""
        items: list[Any] = []
        cursor: str | None = None
        for _ in range(PAGES_MAX):
            query = {**params, **({"cursor": cursor} if cursor is not None else {})}
            page = await self.client.get(path, params=query, headers=reader.headers)
            assert page.status_code == 200, page.text
            items.extend(page.json()[key])
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return items
        raise AssertionError(f"{path} did not end within {PAGES_MAX} pages")

    async def sign_in(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/auth/token", json={"email": email, "password": password}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


class User:
    def __init__(
        self, user_id: str, email: str, role: Role, access_token: str, refresh_token: str
    ) -> None:
        self.user_id = user_id
        self.email = email
        self.role = role
        self.access_token = access_token
        self.refresh_token = refresh_token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@pytest.fixture(scope="session")
async def api_settings(databases: Databases, nats_url: str) -> Settings:
    return app_settings(await databases.create("api"), nats_url)


def app_settings(database_url: str, nats_url: str, **overrides: Any) -> Settings:
    """Settings for an app under test: cheap hashes, limits out of the way unless given."""
    given: dict[str, Any] = {
        "rate_limit_per_minute": RATE_LIMIT_PER_MINUTE_MAX,
        "auth_rate_limit_per_minute": RATE_LIMIT_PER_MINUTE_MAX,
        "argon2_time_cost": TEST_HASH_COST.time_cost,
        "argon2_memory_kib": TEST_HASH_COST.memory_kib,
        "argon2_parallelism": TEST_HASH_COST.parallelism,
        **overrides,
    }
    return Settings(database_url=database_url, nats_url=nats_url, jwt_secret=JWT_SECRET, **given)


@pytest.fixture(scope="session")
async def api(api_settings: Settings) -> AsyncIterator[Api]:
    async with AsyncTestClient(app=create_app(api_settings)) as client:
        yield Api(client, api_settings)


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """The response is problem+json with this status and code, a request id, no trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body
