"""Sign-up, sign-in, refresh rotation, logout, lockout and every way a token is refused."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
import pytest

from ledger.domain.user import Role
from tests.e2e.conftest import JWT_SECRET, PASSWORD, Api, assert_problem


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(uuid.uuid4()),
        "role": "admin",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
        "iss": "ledger",
        "aud": "ledger-api",
        "token_version": 1,
    }
    claims.update(overrides)
    return claims


async def test_register_sign_in_and_me(api: Api) -> None:
    email = api.new_email()
    response = await api.client.post(
        "/api/v1/auth/register",
        json={"email": email.upper(), "password": PASSWORD, "display_name": "Ada"},
    )
    assert response.status_code == 201, response.text
    registered = response.json()
    assert registered["email"] == email
    assert registered["role"] == "trader"
    assert isinstance(registered["consistency_token"], str)

    tokens = await api.sign_in(email)
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    assert tokens["refresh_expires_in"] == 7 * 24 * 3600
    claims = jwt.decode(
        tokens["access_token"], JWT_SECRET, algorithms=["HS256"], audience="ledger-api"
    )
    assert {"sub", "role", "jti", "exp", "iat", "iss", "aud", "token_version"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 900

    me = await api.client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.status_code == 200, me.text
    assert me.json() == {"user_id": registered["user_id"], "email": email, "role": "trader"}


@pytest.mark.parametrize("role", list(Role))
async def test_me_admits_every_role(api: Api, role: Role) -> None:
    user = await api.user(role)
    response = await api.client.get("/api/v1/users/me", headers=user.headers)
    assert response.status_code == 200, response.text
    assert response.json()["role"] == role.value


async def test_register_refuses_a_taken_email(api: Api) -> None:
    email = api.new_email()
    first = await api.client.post(
        "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
    )
    assert first.status_code == 201
    again = await api.client.post(
        "/api/v1/auth/register", json={"email": f" {email.upper()} ", "password": PASSWORD}
    )
    assert_problem(again, 409, "EMAIL_TAKEN")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com"}, "password"),
        ({"email": "a@example.com", "password": "short"}, "password"),
        ({"email": "a@example.com", "password": PASSWORD, "role": "admin"}, "role"),
        ({"email": 42, "password": PASSWORD}, "email"),
    ],
)
async def test_register_validation_errors_name_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    response = await api.client.post("/api/v1/auth/register", json=body)
    problem = assert_problem(response, 400, "VALIDATION_ERROR")
    assert any(field in error["message"] or error["field"] == field for error in problem["errors"])


async def test_register_refuses_a_malformed_email_with_its_domain_code(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/auth/register", json={"email": "not-an-email", "password": PASSWORD}
    )
    assert_problem(response, 422, "INVALID_EMAIL")


async def test_malformed_json_is_a_400_not_a_500(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/auth/token",
        content=b'{"email": "a@example.com", "password": ',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 400, "MALFORMED_REQUEST")


async def test_an_oversized_body_is_refused(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/auth/register",
        content=b'{"email": "' + b"a" * 100_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 413, "REQUEST_TOO_LARGE")


async def test_unknown_route_is_a_problem(api: Api) -> None:
    response = await api.client.get("/api/v1/nothing-here")
    assert_problem(response, 404, "NOT_FOUND")


async def test_request_id_is_echoed_when_sane_and_generated_otherwise(api: Api) -> None:
    given = await api.client.get("/api/v1/users/me", headers={"X-Request-ID": "abc-123.x"})
    assert given.headers["x-request-id"] == "abc-123.x"
    assert_problem(given, 401, "TOKEN_MISSING")
    insane = await api.client.get("/health", headers={"X-Request-ID": "has space/<script>"})
    assert insane.headers["x-request-id"] not in ("", "has space/<script>")
    assert len(insane.headers["x-request-id"]) == 32


async def test_wrong_password_and_unknown_email_look_the_same(api: Api) -> None:
    user = await api.user(Role.TRADER)
    wrong = await api.client.post(
        "/api/v1/auth/token", json={"email": user.email, "password": "wrong password!"}
    )
    unknown = await api.client.post(
        "/api/v1/auth/token", json={"email": api.new_email(), "password": PASSWORD}
    )
    for response in (wrong, unknown):
        body = assert_problem(response, 401, "INVALID_CREDENTIALS")
        assert body["detail"] == "the email or the password is wrong"


async def test_five_failures_lock_an_email_whether_or_not_it_exists(api: Api) -> None:
    user = await api.user(Role.TRADER)
    for email in (user.email, api.new_email("ghost")):
        for _ in range(5):
            failed = await api.client.post(
                "/api/v1/auth/token", json={"email": email, "password": "wrong password!"}
            )
            assert_problem(failed, 401, "INVALID_CREDENTIALS")
        locked = await api.client.post(
            "/api/v1/auth/token", json={"email": email, "password": PASSWORD}
        )
        assert_problem(locked, 429, "LOGIN_LOCKED")
        assert locked.headers["retry-after"] == "900"


async def test_a_success_resets_the_failure_count(api: Api) -> None:
    user = await api.user(Role.TRADER)
    for _ in range(4):
        await api.client.post(
            "/api/v1/auth/token", json={"email": user.email, "password": "wrong password!"}
        )
    await api.sign_in(user.email)
    for _ in range(4):
        await api.client.post(
            "/api/v1/auth/token", json={"email": user.email, "password": "wrong password!"}
        )
    await api.sign_in(user.email)


async def test_refresh_rotates_and_reuse_revokes_the_family(api: Api) -> None:
    user = await api.user(Role.TRADER)
    first = await api.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}
    )
    assert first.status_code == 200, first.text
    rotated = first.json()
    assert rotated["refresh_token"] != user.refresh_token
    me = await api.client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {rotated['access_token']}"}
    )
    assert me.status_code == 200

    reused = await api.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}
    )
    assert_problem(reused, 401, "REFRESH_TOKEN_REUSED")
    # The thief's reuse also killed the legitimate holder's next token: the family is gone.
    after = await api.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}
    )
    assert_problem(after, 401, "REFRESH_TOKEN_INVALID")


async def test_an_unknown_refresh_token_is_refused(api: Api) -> None:
    response = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": "nope"})
    assert_problem(response, 401, "REFRESH_TOKEN_INVALID")


async def test_an_access_token_is_not_a_refresh_token(api: Api) -> None:
    user = await api.user(Role.TRADER)
    response = await api.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": user.access_token[:128]}
    )
    assert_problem(response, 401, "REFRESH_TOKEN_INVALID")


async def test_logout_revokes_the_access_token_and_the_refresh_family(api: Api) -> None:
    user = await api.user(Role.TRADER)
    out = await api.client.post(
        "/api/v1/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.headers
    )
    assert out.status_code == 204, out.text
    me = await api.client.get("/api/v1/users/me", headers=user.headers)
    assert_problem(me, 401, "TOKEN_REVOKED")
    refresh = await api.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}
    )
    assert refresh.status_code == 401
    # Other sessions of the same user live on.
    other = await api.sign_in(user.email)
    me = await api.client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {other['access_token']}"}
    )
    assert me.status_code == 200


async def test_logout_needs_a_token(api: Api) -> None:
    response = await api.client.post("/api/v1/auth/logout")
    assert_problem(response, 401, "TOKEN_MISSING")


async def test_an_expired_token_is_refused_as_expired(api: Api) -> None:
    user = await api.user(Role.TRADER)
    now = int(time.time())
    token = jwt.encode(
        _claims(sub=user.user_id, role="trader", iat=now - 1000, exp=now - 100),
        JWT_SECRET,
        algorithm="HS256",
    )
    response = await api.client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert_problem(response, 401, "TOKEN_EXPIRED")


def _tamper(token: str, **changes: Any) -> str:
    """The token with its payload changed and its signature kept."""
    header, _, rest = token.partition(".")
    payload_part, _, signature = rest.partition(".")
    claims = json.loads(jwt.utils.base64url_decode(payload_part))
    claims.update(changes)
    encoded = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{encoded}.{signature}"


async def test_a_tampered_token_is_refused(api: Api) -> None:
    user = await api.user(Role.TRADER)
    forged = _tamper(user.access_token, role="admin")
    response = await api.client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {forged}"}
    )
    assert_problem(response, 401, "TOKEN_INVALID")


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "another-api"},
        {"aud": ["ledger-api", "another-api"]},
        {"iss": "someone-else"},
        {"token_version": None},
        {"role": "superuser"},
        {"sub": "not-a-uuid"},
    ],
)
async def test_tokens_with_wrong_claims_are_refused(api: Api, claims: dict[str, Any]) -> None:
    user = await api.user(Role.TRADER)
    merged = _claims(sub=user.user_id, role="trader") | claims
    payload = {name: value for name, value in merged.items() if value is not None}
    token = jwt.encode(payload, JWT_SECRET, algorithm="HS256")
    response = await api.client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert_problem(response, 401, "TOKEN_INVALID")


async def test_a_token_signed_with_another_key_or_none_is_refused(api: Api) -> None:
    user = await api.user(Role.TRADER)
    claims = _claims(sub=user.user_id, role="trader")
    other_key = jwt.encode(claims, "x" * 48, algorithm="HS256")
    unsigned = jwt.encode(claims, None, algorithm="none")
    for token in (other_key, unsigned, "garbage", ""):
        response = await api.client.get(
            "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, response.text
        assert response.json()["code"] in ("TOKEN_INVALID", "TOKEN_MISSING")


async def test_a_token_of_an_older_token_version_is_revoked(api: Api) -> None:
    user = await api.user(Role.TRADER)
    token = jwt.encode(
        _claims(sub=user.user_id, role="trader", token_version=0), JWT_SECRET, algorithm="HS256"
    )
    response = await api.client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert_problem(response, 401, "TOKEN_REVOKED")


async def test_a_basic_scheme_is_not_a_bearer_token(api: Api) -> None:
    response = await api.client.get(
        "/api/v1/users/me", headers={"Authorization": "Basic dXNlcjpwYXNz"}
    )
    assert_problem(response, 401, "TOKEN_INVALID")
