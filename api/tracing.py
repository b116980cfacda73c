"""HTTP spans: Litestar's OpenTelemetry plugin on the app's tracer provider.

One server span per request, the ASGI middleware's, continuing the caller's W3C
`traceparent` when it sends a valid one (a malformed one is ignored: a new trace starts).
The middleware's extra spans for every ASGI message sent or received are left out: a
span each for little information. Liveness, readiness, metrics and the schema are not
traced. Once routed, the span takes the route's template as its name and `http.route`
(`POST /api/v1/accounts/{account_id}/deposits`, not one name per id), and the request id,
which ties the trace to the logs and to the correlation id of the events appended.

The command and append spans below it are the command side's (commands/runtime.py);
see ledger/tracing.py for the whole chain.
"""

from __future__ import annotations

from typing import Final

from litestar.enums import ScopeType
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import Message, Scope
from opentelemetry import trace
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import TracerProvider

from api.request_id import request_id_of

UNTRACED_PATHS: Final = ("^/health$", "^/ready$", "^/metrics$", "^/schema")
REQUEST_ID: Final = "ledger.request_id"


def opentelemetry_plugin(tracer_provider: TracerProvider | None) -> OpenTelemetryPlugin:
    """The plugin on `tracer_provider`, else on the global provider (a no-op unless set)."""
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            tracer_provider=tracer_provider,
            exclude=list(UNTRACED_PATHS),
            exclude_spans=["receive", "send"],
        )
    )


async def name_server_span(message: Message, scope: Scope) -> None:
    """Before-send hook: name the server span after its route and tag its request id."""
    if message["type"] != "http.response.start" or scope["type"] != ScopeType.HTTP:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    template = scope.get("path_template")
    if template:
        span.update_name(f"{scope['method']} {template}")
        span.set_attribute(HTTP_ROUTE, template)
    span.set_attribute(REQUEST_ID, request_id_of(scope))
