"""What every read-model route now gets from its declaration (api/queries/model.py), checked
on every route rather than on the one that happened to be tested: filters are checked
before the cursor, and each list and get answers for the roles it names."""

from __future__ import annotations

import pytest

from api.queries import MODELS
from ledger.domain.user import Role
from tests.e2e.conftest import Api, assert_problem

RANGED = ["/api/v1/orders", "/api/v1/trades", "/api/v1/signals", "/api/v1/daily-pnl"]


@pytest.mark.parametrize("path", RANGED)
async def test_a_bad_from_is_named_before_a_bad_cursor(api: Api, path: str) -> None:
    analyst = await api.user(Role.ANALYST)
    response = await api.client.get(
        path, params={"from": "yesterday", "cursor": "!!!"}, headers=analyst.headers
    )
    body = assert_problem(response, 400, "VALIDATION_ERROR")
    assert [error["field"] for error in body["errors"]] == ["from"]


async def test_every_list_answers_its_roles_with_a_page(api: Api) -> None:
    """An empty or full first page, under the page's own field, for each admitted role."""
    users = {role: await api.user(role) for role in Role}
    for model in MODELS:
        for role, user in users.items():
            response = await api.client.get(model.list_path, headers=user.headers)
            if role not in model.roles:
                assert_problem(response, 403, "FORBIDDEN")
                continue
            assert response.status_code == 200, (model.name, role, response.text)
            assert set(response.json()) == {model.rows_field, "next_cursor"}
