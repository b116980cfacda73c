"""A NUL character in text input is a 400: PostgreSQL text and jsonb cannot store one."""

from __future__ import annotations

from ledger.domain.user import Role
from tests.e2e.conftest import Api, assert_problem


async def test_a_nul_in_a_log_filter_is_a_400(api: Api) -> None:
    auditor = await api.user(Role.AUDITOR)
    for name in ("actor", "type", "stream_type"):
        response = await api.client.get(
            "/api/v1/events", params={name: "a\x00b"}, headers=auditor.headers
        )
        assert_problem(response, 400, "VALIDATION_ERROR")


async def test_a_nul_in_a_command_body_is_a_400(api: Api) -> None:
    admin = await api.user(Role.ADMIN)
    response = await api.client.post(
        "/api/v1/strategies", json={"name": "momentum\x00"}, headers=admin.headers
    )
    assert_problem(response, 400, "VALIDATION_ERROR")


async def test_a_nul_in_a_sign_in_email_is_a_400(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/auth/token", json={"email": "a\x00@example.com", "password": "whatever"}
    )
    assert_problem(response, 400, "VALIDATION_ERROR")
