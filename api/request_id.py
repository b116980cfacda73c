"""The request id: the client's `X-Request-ID` when it is sane, else a fresh one.

It is decided once per request, kept in the ASGI scope's state, put in every problem
body, echoed in the `X-Request-ID` response header by a before-send hook (which sees
every response, error responses included), and recorded as the correlation id of the
events a command appends.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import Message, Scope

HEADER: Final = "x-request-id"
STATE_KEY: Final = "request_id"
# Letters, digits and a few separators, bounded: nothing that could split a log line,
# smuggle a header or bloat the response.
_SANE: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Correlation ids of events are UUIDs; a non-UUID request id maps to a stable one.
_NAMESPACE: Final = uuid.UUID("0b7c7f7e-2c64-4f4e-9d0a-6a3c1e5f6d21")


def request_id_of(scope: Scope | dict[str, Any]) -> str:
    """This request's id, decided on first use and the same for the rest of the request."""
    state: dict[str, Any] = scope.setdefault("state", {})
    found = state.get(STATE_KEY)
    if isinstance(found, str):
        return found
    given = _header(scope)
    request_id = given if given is not None and _SANE.fullmatch(given) else uuid.uuid4().hex
    state[STATE_KEY] = request_id
    return request_id


def correlation_id_of(request_id: str) -> uuid.UUID:
    """The UUID recorded as the correlation id of events appended for this request."""
    try:
        return uuid.UUID(request_id)
    except ValueError:
        return uuid.uuid5(_NAMESPACE, request_id)


def _header(scope: Scope | dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == HEADER.encode():
            try:
                return bytes(value).decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


async def echo_request_id(message: Message, scope: Scope) -> None:
    """Before-send hook: every HTTP response carries the request's id."""
    if message["type"] == "http.response.start" and scope["type"] == ScopeType.HTTP:
        headers = MutableScopeHeaders.from_message(message)
        headers[HEADER] = request_id_of(scope)
