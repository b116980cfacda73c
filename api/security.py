"""Bearer authentication and role guards.

`BearerAuthentication` verifies the access token (signature, exp, iss, aud, required
claims), then checks it against auth.credentials in one query (shared with the checks
of concurrent requests, api/access_checks.py): the user exists, is not disabled, the
token's token_version is the current one and its jti was not revoked by a logout.
Routes name the roles they admit with `access(...)`; one guard enforces that, and the
same roles are written into the route's OpenAPI description.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Final

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme

from api.access_checks import AccessChecks
from api.errors import ApiProblem, problem_responses
from api.tokens import AccessClaims, TokenIssuer, unauthenticated
from ledger.domain.user import Role

SECURITY_SCHEME: Final = "BearerToken"
ROLES_OPT: Final = "roles"
AUTHORIZATION_LENGTH_MAX: Final = 4096


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated user of a request."""

    user_id: uuid.UUID
    email: str
    role: Role
    claims: AccessClaims


class BearerAuthentication(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if not header:
            raise unauthenticated("TOKEN_MISSING", "an Authorization: Bearer token is required")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or len(header) > AUTHORIZATION_LENGTH_MAX:
            raise unauthenticated("TOKEN_INVALID", "the Authorization header is not a Bearer token")
        issuer: TokenIssuer = connection.app.state.tokens
        claims = issuer.verify(token.strip())
        checks: AccessChecks = connection.app.state.access_checks
        credential, revoked = await checks.check(claims.sub, claims.jti)
        if credential is None or credential.disabled or revoked:
            raise unauthenticated("TOKEN_REVOKED", "the access token was revoked")
        if credential.token_version != claims.token_version:
            raise unauthenticated("TOKEN_REVOKED", "the access token was revoked")
        principal = Principal(
            user_id=credential.user_id, email=credential.email, role=credential.role, claims=claims
        )
        return AuthenticationResult(user=principal, auth=claims)


def authentication_middleware() -> DefineMiddleware:
    return DefineMiddleware(BearerAuthentication)


def openapi_components() -> Components:
    return Components(
        security_schemes={
            SECURITY_SCHEME: SecurityScheme(
                type="http",
                scheme="Bearer",
                bearer_format="JWT",
                description="Access token from POST /api/v1/auth/token (15 minutes).",
            )
        }
    )


SECURITY: Final[list[SecurityRequirement]] = [{SECURITY_SCHEME: []}]


async def role_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Deny unless the route names the caller's role. A route that names none admits nobody.

    A coroutine although it awaits nothing: Litestar runs a plain function guard in a
    worker thread, and handing every request to a thread and back (the GIL included)
    cost more than the whole rest of a query's handling under load."""
    allowed: frozenset[Role] = handler.opt.get(ROLES_OPT, frozenset())
    principal = connection.user
    if not isinstance(principal, Principal):
        raise unauthenticated("TOKEN_MISSING", "an Authorization: Bearer token is required")
    if principal.role not in allowed:
        raise forbidden(principal.role, allowed)


def forbidden(role: Role, allowed: Iterable[Role]) -> ApiProblem:
    names = ", ".join(sorted(r.value for r in allowed)) or "no role"
    return ApiProblem(403, "FORBIDDEN", f"role {role.value} may not do this (allowed: {names})")


# Any protected route can refuse input, a missing or bad token, and a role.
# 429: every protected route is rate limited (api/limits.py).
PROTECTED_ERRORS: Final = (400, 401, 403, 429)


def access(
    *roles: Role, summary: str, description: str = "", errors: Iterable[int] = ()
) -> dict[str, Any]:
    """Route keyword arguments: the roles admitted, and the same roles in OpenAPI, with the
    error statuses the route may answer (`errors`, beyond those of every protected route)."""
    assert roles, "a protected route admits at least one role"
    names = ", ".join(role.value for role in roles)
    text = f"{description}\n\n**Roles:** {names}".strip()
    return {
        "middleware": [authentication_middleware()],
        "guards": [role_guard],
        "opt": {ROLES_OPT: frozenset(roles)},
        "summary": summary,
        "description": text,
        "security": SECURITY,
        "responses": problem_responses(*PROTECTED_ERRORS, *errors),
    }


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = connection.user
    assert isinstance(principal, Principal), "route reached without authentication"
    return principal
