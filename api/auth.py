"""Sign-up, sign-in, refresh rotation, logout and the caller's own profile.

- `POST /auth/register`: a trader account (other roles: `ledger users create`).
- `POST /auth/token`: email + password -> access token (15 min) + refresh token (7 days).
  Five failures for one email in 15 minutes lock it for the rest of the window, whether
  or not the email exists, and the answer never says which of email or password was
  wrong.
- `POST /auth/refresh`: a refresh token is single-use; using it returns the next one of
  its family. Presenting a used one again revokes the whole family.
- `POST /auth/logout`: revokes the access token presented and the refresh family given.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from litestar import Request, Router, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from api import credentials
from api.commanding import command_context
from api.consistency import encode_token
from api.errors import ApiProblem, problem_responses
from api.passwords import Passwords
from api.registration import Registrar
from api.schemas import (
    LogoutRequest,
    RefreshRequest,
    RegisterRequest,
    TokenPair,
    TokenRequest,
    UserRegisteredOut,
)
from api.security import Principal, access, principal_of
from api.tokens import (
    REFRESH_TTL,
    TokenIssuer,
    new_refresh_token,
    refresh_token_hash,
    unauthenticated,
    utc_now,
)
from ledger.domain.errors import InvalidEmailError
from ledger.domain.user import Role, normalize_email

ALL_ROLES: Final = tuple(Role)
LOCKOUT_RETRY_AFTER_S: Final = 900


@post(
    "/register",
    status_code=HTTP_201_CREATED,
    summary="Register a trader",
    description="Creates a user with the trader role. Anyone may call it.",
    security=[],
    responses=problem_responses(400, 409, 413, 422, 429),
)
async def register(
    request: Request[Any, Any, State], data: JSONBody[RegisterRequest]
) -> UserRegisteredOut:
    registrar: Registrar = request.app.state.registrar
    registered = await registrar.register(
        email=data.email,
        password=data.password,
        display_name=data.display_name,
        role=Role.TRADER,
        context=command_context(request, actor=None),
    )
    token = registered.result.consistency_token
    assert token is not None, "a registration always appends"
    return UserRegisteredOut(
        user_id=registered.user_id,
        email=registered.email,
        role=registered.role,
        consistency_token=encode_token(token),
    )


@post(
    "/token",
    status_code=HTTP_200_OK,
    summary="Sign in",
    security=[],
    responses=problem_responses(400, 401, 413, 429),
)
async def token(request: Request[Any, Any, State], data: JSONBody[TokenRequest]) -> TokenPair:
    """Email and password for an access token and a refresh token."""
    state = request.app.state
    passwords: Passwords = state.passwords
    now = utc_now()
    email = _lookup_email(data.email)
    if await credentials.is_locked(state.pool, email, now):
        raise ApiProblem(
            429,
            "LOGIN_LOCKED",
            "too many failed sign-ins for this email; try again later",
            headers={"Retry-After": str(LOCKOUT_RETRY_AFTER_S)},
        )
    registrar: Registrar = state.registrar
    credential = await registrar.credential_for(email)
    matches = await passwords.verify(
        None if credential is None else credential.password_hash, data.password
    )
    if credential is None or not matches or credential.disabled:
        await credentials.record_failure(state.pool, email, now)
        raise unauthenticated("INVALID_CREDENTIALS", "the email or the password is wrong")
    await credentials.clear_failures(state.pool, email)
    return await _issue_pair(state, credential, family_id=uuid.uuid4(), now=now)


def _lookup_email(email: str) -> str:
    """The key an email is looked up and locked under; a malformed one still gets one."""
    try:
        return normalize_email(email)
    except InvalidEmailError:
        return email.strip().lower()


@post(
    "/refresh",
    status_code=HTTP_200_OK,
    summary="Rotate a refresh token",
    security=[],
    responses=problem_responses(400, 401, 413, 429),
)
async def refresh(request: Request[Any, Any, State], data: JSONBody[RefreshRequest]) -> TokenPair:
    """A new token pair for a refresh token, which is then spent. Reuse revokes its family."""
    state = request.app.state
    now = utc_now()
    token_hash = refresh_token_hash(data.refresh_token)
    reused = False
    async with state.pool.acquire() as connection, connection.transaction():
        row = await credentials.lock_refresh(connection, token_hash)
        if row is not None and row.used_at is not None and row.revoked_at is None:
            await credentials.revoke_family(connection, row.family_id, now)
            reused = True
        elif row is not None and row.revoked_at is None and row.expires_at > now:
            credential = await credentials.by_id(connection, row.user_id)
            if (
                credential is not None
                and not credential.disabled
                and credential.token_version == row.token_version
            ):
                await credentials.mark_used(connection, token_hash, now)
                return await _issue_pair(
                    state, credential, family_id=row.family_id, now=now, connection=connection
                )
    # Outside the transaction: a reuse's revocation is committed before the refusal.
    if reused:
        raise unauthenticated("REFRESH_TOKEN_REUSED", "the refresh token was already used")
    raise unauthenticated("REFRESH_TOKEN_INVALID", "the refresh token is not valid")


async def _issue_pair(
    state: State,
    credential: credentials.Credential,
    *,
    family_id: uuid.UUID,
    now: datetime,
    connection: Any = None,
) -> TokenPair:
    tokens: TokenIssuer = state.tokens
    refresh_token, token_hash = new_refresh_token()
    await credentials.insert_refresh(
        state.pool if connection is None else connection,
        token_hash,
        family_id=family_id,
        user_id=credential.user_id,
        token_version=credential.token_version,
        expires_at=now + REFRESH_TTL,
    )
    access_token = tokens.issue(
        credential.user_id, credential.role, credential.token_version, now=now
    )
    return TokenPair(
        access_token=access_token,
        token_type="Bearer",  # noqa: S106 (the scheme name, not a secret)
        expires_in=int(tokens.access_ttl.total_seconds()),
        refresh_token=refresh_token,
        refresh_expires_in=int(REFRESH_TTL.total_seconds()),
    )


@post(
    "/logout",
    status_code=HTTP_204_NO_CONTENT,
    **access(
        *ALL_ROLES,
        summary="Sign out",
        description="Revokes this access token and, if given, the refresh token's whole family.",
        errors=(413,),
    ),
)
async def logout(
    request: Request[Principal, Any, State], data: JSONBody[LogoutRequest | None]
) -> None:
    state = request.app.state
    principal = principal_of(request)
    now = utc_now()
    expires_at = datetime.fromtimestamp(principal.claims.exp, tz=now.tzinfo)
    await credentials.revoke_access(state.pool, principal.claims.jti, expires_at)
    if data is not None and data.refresh_token is not None:
        async with state.pool.acquire() as connection, connection.transaction():
            row = await credentials.lock_refresh(connection, refresh_token_hash(data.refresh_token))
            # Only the caller's own family: a stranger's token is ignored, not revoked.
            if row is not None and row.user_id == principal.user_id:
                await credentials.revoke_family(connection, row.family_id, now)


auth_router = Router(
    path="/api/v1/auth", route_handlers=[register, token, refresh, logout], tags=["auth"]
)
