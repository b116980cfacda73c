"""A password, role or disable change revokes every session of the user."""

from __future__ import annotations

import asyncpg
import pytest

from ledger.domain.user import Role
from tests.e2e.conftest import PASSWORD, Api, User, assert_problem

NEW_PASSWORD = "another long passphrase"


async def _assert_signed_out(api: Api, user: User) -> None:
    me = await api.client.get("/api/v1/users/me", headers=user.headers)
    assert_problem(me, 401, "TOKEN_REVOKED")
    refresh = await api.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}
    )
    assert_problem(refresh, 401, "REFRESH_TOKEN_INVALID")


async def test_changing_my_password_signs_out_every_session(api: Api) -> None:
    user = await api.user(Role.TRADER)
    response = await api.client.post(
        "/api/v1/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=user.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_version"] == 2
    await _assert_signed_out(api, user)
    wrong = await api.client.post(
        "/api/v1/auth/token", json={"email": user.email, "password": PASSWORD}
    )
    assert_problem(wrong, 401, "INVALID_CREDENTIALS")
    await api.sign_in(user.email, NEW_PASSWORD)


async def test_changing_my_password_needs_the_current_one(api: Api) -> None:
    user = await api.user(Role.ANALYST)
    response = await api.client.post(
        "/api/v1/users/me/password",
        json={"current_password": "not my password", "new_password": NEW_PASSWORD},
        headers=user.headers,
    )
    assert_problem(response, 401, "INVALID_CREDENTIALS")
    me = await api.client.get("/api/v1/users/me", headers=user.headers)
    assert me.status_code == 200


async def test_an_admin_changes_a_role_and_the_old_tokens_die(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    user = await api.user(Role.TRADER)
    response = await api.client.post(
        f"/api/v1/users/{user.user_id}/role", json={"role": "analyst"}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "analyst"
    await _assert_signed_out(api, user)
    tokens = await api.sign_in(user.email)
    me = await api.client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.json()["role"] == "analyst"


async def test_a_disabled_user_is_signed_out_and_cannot_sign_in(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    user = await api.user(Role.TRADER)
    response = await api.client.post(
        f"/api/v1/users/{user.user_id}/disable", json={"reason": "left"}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["disabled"] is True
    await _assert_signed_out(api, user)
    again = await api.client.post(
        "/api/v1/auth/token", json={"email": user.email, "password": PASSWORD}
    )
    assert_problem(again, 401, "INVALID_CREDENTIALS")
    twice = await api.client.post(f"/api/v1/users/{user.user_id}/disable", headers=admin.headers)
    assert_problem(twice, 409, "USER_DISABLED")


@pytest.mark.parametrize("role", [Role.TRADER, Role.ANALYST, Role.AUDITOR, Role.EXECUTION])
async def test_only_admins_change_roles_or_disable(api: Api, role: Role) -> None:
    user = await api.user(role)
    for url, body in (
        (f"/api/v1/users/{user.user_id}/role", {"role": "admin"}),
        (f"/api/v1/users/{user.user_id}/disable", {}),
    ):
        response = await api.client.post(url, json=body, headers=user.headers)
        assert_problem(response, 403, "FORBIDDEN")


async def test_changing_an_unknown_user_is_404(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    response = await api.client.post(
        "/api/v1/users/00000000-0000-4000-8000-000000000004/role",
        json={"role": "auditor"},
        headers=admin.headers,
    )
    assert_problem(response, 404, "USER_NOT_FOUND")


async def test_an_unknown_role_is_a_400(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    response = await api.client.post(
        f"/api/v1/users/{admin.user_id}/role", json={"role": "root"}, headers=admin.headers
    )
    assert_problem(response, 400, "VALIDATION_ERROR")


async def test_a_lost_credential_row_is_rebuilt_from_the_log(api: Api) -> None:
    user = await api.user(Role.TRADER)
    assert api.settings.database_url is not None
    connection = await asyncpg.connect(api.settings.database_url)
    try:
        await connection.execute(
            "DELETE FROM auth.refresh_tokens WHERE user_id = $1::uuid", user.user_id
        )
        await connection.execute(
            "DELETE FROM auth.credentials WHERE user_id = $1::uuid", user.user_id
        )
    finally:
        await connection.close()
    await api.sign_in(user.email)


async def test_the_openapi_document_names_each_routes_roles(api: Api) -> None:
    schema = (await api.client.get("/schema/openapi.json")).json()
    deposit = schema["paths"]["/api/v1/accounts/{account_id}/deposits"]["post"]
    assert "**Roles:** admin" in deposit["description"]
    assert deposit["security"] == [{"BearerToken": []}]
    fills = schema["paths"]["/api/v1/orders/{order_id}/fills"]["post"]
    assert "**Roles:** execution" in fills["description"]
    events = schema["paths"]["/api/v1/events"]["get"]
    assert "**Roles:** auditor, analyst" in events["description"]
    assert "BearerToken" in schema["components"]["securitySchemes"]
    assert not schema["paths"]["/api/v1/auth/token"]["post"].get("security")
