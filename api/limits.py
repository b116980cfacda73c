"""Rate limits: Litestar's RateLimitMiddleware, two policies, answers in problem+json.

- `auth`: sign-up, sign-in and refresh, per client address, `auth_rate_limit_per_minute`
  (tight: these routes hash passwords and are what a password guesser calls).
- `api`: every other route but /health, /ready and /metrics, per signed-in user (the
  access token's subject, once its signature checks out) or else per client address,
  `rate_limit_per_minute`.

Each answer carries RateLimit-Policy, RateLimit-Limit, RateLimit-Remaining and
RateLimit-Reset; a request over the limit is a 429 problem with code RATE_LIMITED and
Retry-After (seconds until the window resets). Windows are fixed, one minute from the
first request of the window. Counts are kept in each process's memory (see ADR 0008).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from litestar import Request
from litestar._asgi.utils import wrap_in_exception_handler
from litestar.datastructures import State
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.rate_limit import (
    RateLimitConfig,
    RateLimitMiddleware,
    get_remote_address,
)
from litestar.stores.base import Store
from litestar.types import ASGIApp, Receive, Scope, Send

from api.errors import ApiProblem
from api.tokens import TokenIssuer
from ledger.settings import Settings

AUTH_PATHS: Final = frozenset(
    {"/api/v1/auth/register", "/api/v1/auth/token", "/api/v1/auth/refresh"}
)
# Matched against the whole path: probes and scrapes must never be throttled.
UNLIMITED_PATHS: Final = ["^/health$", "^/ready$", "^/metrics$"]
WINDOW: Final = "minute"
WINDOW_S: Final = 60
# Expired counts are dropped at most this often (Litestar's memory store keeps them
# until read), which bounds the store to the clients of about two windows.
PURGE_INTERVAL_S: Final = 60.0
AUTHORIZATION_LENGTH_MAX: Final = 4096


class Guard:
    """What every route's copy of one policy's middleware shares: the lock around a
    count's read and write, and when the store was last purged.

    Litestar builds a middleware instance per route, each with a lock of its own; counts
    are per client, not per route, so requests to two routes could otherwise both read
    a count and both write it back one higher, losing one.
    """

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.purged_at = time.monotonic()


@dataclass
class LimitConfig(RateLimitConfig):
    guard: Guard = field(default_factory=Guard)


class LimitedMiddleware(RateLimitMiddleware):
    """Litestar's rate limiter, answering with RATE_LIMITED and Retry-After.

    What follows it (authentication) is wrapped in Litestar's exception handler, so that a
    refusal raised there (401) is a response by the time it passes here and gets the
    RateLimit headers too (see api/metrics.py for the same wrapping).
    """

    def __init__(self, app: ASGIApp, config: RateLimitConfig) -> None:
        super().__init__(wrap_in_exception_handler(app), config)
        assert isinstance(config, LimitConfig), "built by rate_limits()"
        self.guard = config.guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["litestar_app"]
        request: Request[Any, Any, Any] = app.request_class(scope)
        if not await self.should_check_request(request=request):
            await self.app(scope, receive, send)
            return
        store = self.config.get_store_from_app(app)
        key = self.cache_key_from_request(request)
        async with self.guard.lock:
            await self._purge(store)
            cache_object = await self.retrieve_cached_history(key, store)
            if len(cache_object.history) >= self.max_requests:
                headers = self.create_response_headers(cache_object=cache_object)
                headers["Retry-After"] = str(max(int(headers["RateLimit-Reset"]), 1))
                raise ApiProblem(
                    429,
                    "RATE_LIMITED",
                    f"more than {self.max_requests} requests in {WINDOW_S} s; "
                    f"retry in {headers['Retry-After']} s",
                    headers=headers,
                )
            await self.set_cached_history(key=key, cache_object=cache_object, store=store)
        await self.app(scope, receive, self.create_send_wrapper(send, cache_object))

    async def _purge(self, store: Store) -> None:
        now = time.monotonic()
        # Stores that expire keys by themselves (Redis) have nothing of the kind.
        delete_expired = getattr(store, "delete_expired", None)
        if delete_expired is not None and now - self.guard.purged_at >= PURGE_INTERVAL_S:
            self.guard.purged_at = now
            await delete_expired()


def user_or_address(request: Request[Any, Any, State]) -> str:
    """The access token's subject when its signature and claims check out, else the address.

    Revocation is not checked here (that costs a query; authentication does it next): a
    revoked but well-signed token still names a real user, who is limited as such.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token and len(header) <= AUTHORIZATION_LENGTH_MAX:
        issuer: TokenIssuer = request.app.state.tokens
        try:
            return f"user:{issuer.verify(token.strip()).sub}"
        except ApiProblem:
            pass
    return f"address:{get_remote_address(request)}"


def address(request: Request[Any, Any, Any]) -> str:
    return f"address:{get_remote_address(request)}"


def _is_auth(request: Request[Any, Any, Any]) -> bool:
    # The route's template, not the raw path: "/auth/token/" reaches the same route.
    return request.scope.get("path_template") in AUTH_PATHS


def _is_not_auth(request: Request[Any, Any, Any]) -> bool:
    return not _is_auth(request)


def rate_limits(settings: Settings) -> list[DefineMiddleware]:
    """The rate-limit middleware of both policies (a limit of 0 turns its policy off)."""
    policies = (
        ("auth", settings.auth_rate_limit_per_minute, address, _is_auth),
        ("api", settings.rate_limit_per_minute, user_or_address, _is_not_auth),
    )
    return [
        LimitConfig(
            rate_limit=(WINDOW, limit),
            exclude=UNLIMITED_PATHS,
            identifier_for_request=identify,
            check_throttle_handler=applies,
            middleware_class=LimitedMiddleware,
            # A store per policy: the middleware's keys do not name the policy.
            store=f"rate_limit_{name}",
        ).middleware
        for name, limit, identify, applies in policies
        if limit > 0
    ]
