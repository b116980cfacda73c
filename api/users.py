"""Users: the caller's profile and password; an admin's role changes and disabling.

Every change here bumps the user's token_version in its stream, and the credential row
is synced from the stream before the answer: every access and refresh token issued
before it is refused from then on (TOKEN_REVOKED).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK

from api.commanding import Command, run_command, token_of
from api.errors import COMMAND_ERRORS
from api.passwords import Passwords
from api.registration import Registrar
from api.schemas import (
    ChangePasswordRequest,
    ChangeRoleRequest,
    DisableUserRequest,
    UserChangedOut,
    UserOut,
)
from api.security import Principal, access, principal_of
from api.tokens import unauthenticated
from commands import users
from commands.runtime import Ledger
from ledger.domain.user import Role

ALL_ROLES = tuple(Role)


@get("/me", **access(*ALL_ROLES, summary="The signed-in user"))
async def me(request: Request[Principal, Any, State]) -> UserOut:
    principal = principal_of(request)
    return UserOut(user_id=principal.user_id, email=principal.email, role=principal.role)


@post(
    "/me/password",
    status_code=HTTP_200_OK,
    **access(
        *ALL_ROLES,
        summary="Change my password",
        description="Needs the current password. Signs out every session, this one included.",
        errors=COMMAND_ERRORS,
    ),
)
async def change_password(
    request: Request[Principal, Any, State], data: JSONBody[ChangePasswordRequest]
) -> Response[UserChangedOut]:
    principal = principal_of(request)
    state = request.app.state
    passwords: Passwords = state.passwords
    registrar: Registrar = state.registrar
    credential = await registrar.credential_for(principal.email)
    current = None if credential is None else credential.password_hash
    if not await passwords.verify(current, data.current_password):
        raise unauthenticated("INVALID_CREDENTIALS", "the current password is wrong")
    new_hash = await passwords.hash(data.new_password)

    async def execute(command: Command) -> UserChangedOut:
        message = users.ChangePassword(user_id=principal.user_id, password_hash=new_hash)
        result = await users.change_password(state.ledger, message, command.context)
        return await _synced(registrar, principal.user_id, token_of(result))

    return await run_command(request, UserChangedOut, HTTP_200_OK, execute)


@post(
    "/{user_id:uuid}/role",
    status_code=HTTP_200_OK,
    **access(
        Role.ADMIN,
        summary="Change a user's role",
        description="Revokes their sessions.",
        errors=COMMAND_ERRORS,
    ),
)
async def change_role(
    request: Request[Principal, Any, State],
    user_id: FromPath[UUID],
    data: JSONBody[ChangeRoleRequest],
) -> Response[UserChangedOut]:
    ledger: Ledger = request.app.state.ledger
    registrar: Registrar = request.app.state.registrar

    async def execute(command: Command) -> UserChangedOut:
        message = users.ChangeRole(user_id=user_id, role=data.role)
        result = await users.change_role(ledger, message, command.context)
        return await _synced(registrar, user_id, token_of(result))

    return await run_command(request, UserChangedOut, HTTP_200_OK, execute)


@post(
    "/{user_id:uuid}/disable",
    status_code=HTTP_200_OK,
    **access(
        Role.ADMIN,
        summary="Disable a user",
        description="Final; revokes their sessions.",
        errors=COMMAND_ERRORS,
    ),
)
async def disable_user(
    request: Request[Principal, Any, State],
    user_id: FromPath[UUID],
    data: JSONBody[DisableUserRequest | None] = None,
) -> Response[UserChangedOut]:
    ledger: Ledger = request.app.state.ledger
    registrar: Registrar = request.app.state.registrar
    reason = "" if data is None else data.reason

    async def execute(command: Command) -> UserChangedOut:
        message = users.DisableUser(user_id=user_id, reason=reason)
        result = await users.disable_user(ledger, message, command.context)
        return await _synced(registrar, user_id, token_of(result))

    return await run_command(request, UserChangedOut, HTTP_200_OK, execute)


async def _synced(registrar: Registrar, user_id: UUID, token: str | None) -> UserChangedOut:
    state = await registrar.sync(user_id)
    assert state is not None, "a changed user has a stream"
    return UserChangedOut(
        user_id=user_id,
        role=state.role,
        disabled=state.disabled,
        token_version=state.token_version,
        consistency_token=token,
    )


router = Router(
    path="/api/v1/users",
    route_handlers=[me, change_password, change_role, disable_user],
    tags=["users"],
)
