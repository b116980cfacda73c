"""Access tokens (signed JWTs) and refresh tokens (opaque, stored hashed).

An access token lives 15 minutes and carries sub, role, jti, exp, iat, iss, aud and the
user's token_version; it is HS256-signed with settings.jwt_secret. A refresh token is
32 random bytes the client keeps; the server keeps only its SHA-256, so a leaked table
yields no usable token.

Verifying a token (PyJWT checks every character of it in Python, then the HMAC and the
claims) cost a tenth of a signed-in request's CPU, and a client sends the same token with
every request for 15 minutes. So each issuer remembers the claims of the tokens it has
verified, keyed by the token's exact text, up to VERIFIED_TOKENS_MAX (oldest forgotten
first), and checks only their expiry again on later requests. Only tokens that passed the
whole check are remembered: a forged or altered token is a different text and goes
through the whole check, every time. Revocation is not a property of the text: it is
checked against the database on every request (api/security.py).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt
import msgspec

from api.errors import ApiProblem
from ledger.domain.user import Role

ALGORITHM: Final = "HS256"
ISSUER: Final = "ledger"
AUDIENCE: Final = "ledger-api"
ACCESS_TTL: Final = timedelta(minutes=15)
REFRESH_TTL: Final = timedelta(days=7)
REFRESH_TOKEN_BYTES: Final = 32
# A little slack for clocks of API replicas that disagree by a second or two.
LEEWAY_S: Final = 5
REQUIRED_CLAIMS: Final = ("sub", "role", "jti", "exp", "iat", "iss", "aud", "token_version")
# About 1 KiB each; a process sees far fewer live tokens than this in 15 minutes.
VERIFIED_TOKENS_MAX: Final = 10_000


class AccessClaims(msgspec.Struct, frozen=True, kw_only=True):
    """The verified claims of an access token."""

    sub: uuid.UUID
    role: Role
    jti: str
    exp: int
    iat: int
    iss: str
    aud: str
    token_version: int


class TokenIssuer:
    """Signs and verifies access tokens with one secret."""

    def __init__(
        self,
        secret: str,
        *,
        access_ttl: timedelta = ACCESS_TTL,
        clock: Callable[[], float] = time.time,
        verified_max: int = VERIFIED_TOKENS_MAX,
    ) -> None:
        assert len(secret) >= 32, "a JWT secret shorter than 32 characters weakens HS256"
        assert verified_max >= 1
        self._secret = secret
        self.access_ttl = access_ttl
        self._clock = clock
        self._verified_max = verified_max
        # Token text -> its claims, for tokens that passed `_verify` (oldest first).
        self._verified: dict[str, AccessClaims] = {}

    def issue(self, user_id: uuid.UUID, role: Role, token_version: int, *, now: datetime) -> str:
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "role": role.value,
            "jti": uuid.uuid4().hex,
            "iat": int(now.timestamp()),
            "exp": int((now + self.access_ttl).timestamp()),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "token_version": token_version,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> AccessClaims:
        """The token's claims, or a 401 problem saying whether it expired or is invalid."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            if len(self._verified) >= self._verified_max:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = claims
        # PyJWT's own test, with the same leeway: expired once exp <= now - leeway.
        elif claims.exp <= self._clock() - LEEWAY_S:
            del self._verified[token]
            raise unauthenticated("TOKEN_EXPIRED", "the access token has expired")
        return claims

    def _verify(self, token: str) -> AccessClaims:
        """The whole check: signature, algorithm, required claims, exp, iat, iss, aud."""
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("TOKEN_EXPIRED", "the access token has expired") from None
        except jwt.InvalidTokenError:
            raise unauthenticated("TOKEN_INVALID", "the access token is not valid") from None
        try:
            return msgspec.convert(payload, AccessClaims)
        except msgspec.ValidationError:
            raise unauthenticated("TOKEN_INVALID", "the access token is not valid") from None


def new_refresh_token() -> tuple[str, bytes]:
    """A fresh refresh token for the client, and the hash the server keeps."""
    token = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
    return token, refresh_token_hash(token)


def refresh_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def unauthenticated(code: str, detail: str) -> ApiProblem:
    return ApiProblem(401, code, detail, headers={"WWW-Authenticate": 'Bearer realm="ledger"'})


def utc_now() -> datetime:
    return datetime.now(UTC)
