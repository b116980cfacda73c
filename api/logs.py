"""One log line per HTTP request: request id, user, route, method, status, latency.

`timed` (the app's outermost middleware) notes when the request started and puts its
request id in the log context of everything logged while it is handled. `log_request`
(a before-send hook, so it sees every response, those of errors raised by middleware
included) writes the line when the response's last body part goes out. A request that
matched no route (404, 405) has no middleware run, so its line has no latency.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.request_id import request_id_of
from ledger.logs import log_context

logger = logging.getLogger("api.access")

STARTED_KEY: Final = "ledger_started_at"
STATUS_KEY: Final = "ledger_status"


def timed(app: ASGIApp) -> ASGIApp:
    """Middleware: the request's start time, and its id in the log context."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        scope["state"][STARTED_KEY] = time.perf_counter()
        with log_context(request_id=request_id_of(scope)):
            await app(scope, receive, send)

    return middleware


async def log_request(message: Message, scope: Scope) -> None:
    """Before-send hook: the request's line, once its response is complete."""
    if scope["type"] != ScopeType.HTTP:
        return
    state: dict[str, Any] = scope["state"]
    if message["type"] == "http.response.start":
        state[STATUS_KEY] = message["status"]
        return
    if message["type"] != "http.response.body" or message.get("more_body", False):
        return
    started = state.get(STARTED_KEY)
    latency_ms = None if started is None else round((time.perf_counter() - started) * 1000, 3)
    status = state.get(STATUS_KEY)
    route = scope.get("path_template")
    user = getattr(scope.get("user"), "user_id", None)
    client = scope.get("client")
    fields = {
        "request_id": request_id_of(scope),
        "method": scope.get("method"),
        "route": route,
        "path": scope.get("raw_path", b"").decode("latin-1") or scope.get("path"),
        "status": status,
        "latency_ms": latency_ms,
        "user": None if user is None else str(user),
        "client": None if client is None else client[0],
    }
    logger.info(
        "%s %s %s %s ms",
        fields["method"],
        route or fields["path"],
        status,
        latency_ms,
        extra=fields,
    )
