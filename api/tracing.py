"""HTTP spans: Litestar's OpenTelemetry plugin on the app's tracer provider.

One server span per request, the ASGI middleware's, continuing the caller's W3C
`traceparent` when it sends a valid one (a malformed one is ignored: a new trace starts).
The middleware's extra spans for every ASGI message sent or received are left out: a
span each for little information. Liveness, readiness, metrics and the schema are not
traced. Once routed, the span takes the route's template as its name and `http.route`
(`POST /api/v1/accounts/{account_id}/deposits`, not one name per id), and the request id,
which ties the trace to the logs and to the correlation id of the events appended.

The command and append spans below it are the command side's (commands/runtime.py);
see ledger/tracing.py for the whole chain. When the app's provider never records a span
(no exporter and no sampler configured), the plugin is left out and only the caller's
trace context is carried into the request (`http_tracing`): events still continue the
caller's trace, at a fraction of the plugin's cost.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from litestar.enums import ScopeType
from litestar.plugins import PluginProtocol
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import ASGIApp, Message, Middleware, Receive, Scope, Send
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import TracerProvider

from api.request_id import request_id_of
from ledger.tracing import TRACEPARENT, TRACESTATE, context_of, records

UNTRACED_PATHS: Final = ("^/health$", "^/ready$", "^/metrics$", "^/schema")
REQUEST_ID: Final = "ledger.request_id"
_TRACE_HEADERS: Final = frozenset({TRACEPARENT.encode(), TRACESTATE.encode()})


class HttpTracing(NamedTuple):
    """What the app adds for HTTP tracing: plugins and middleware (outermost first)."""

    plugins: list[PluginProtocol]
    middleware: list[Middleware]


def http_tracing(tracer_provider: TracerProvider | None) -> HttpTracing:
    """Litestar's OpenTelemetry plugin when `tracer_provider` may record a span. When it
    never does (no exporter, no sampler asked for), only the caller's trace context is
    carried into the request: the plugin's middleware would still gather every request's
    attributes and start a span that nothing records, about 0.2 ms of CPU per request
    (docs/adr/0018-api-cpu-per-request.md), while the command's spans only need the
    caller's context to pass the trace on to the events."""
    if records(tracer_provider):
        return HttpTracing([opentelemetry_plugin(tracer_provider)], [])
    return HttpTracing([], [carry_trace_context])


def carry_trace_context(app: ASGIApp) -> ASGIApp:
    """Middleware: the caller's W3C trace context (`traceparent`, `tracestate`), if valid,
    is the current context while the request runs."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        context = _caller_context(scope) if scope["type"] == ScopeType.HTTP else None
        if context is None:
            await app(scope, receive, send)
            return
        token = otel_context.attach(context)
        try:
            await app(scope, receive, send)
        finally:
            otel_context.detach(token)

    return middleware


def _caller_context(scope: Scope) -> otel_context.Context | None:
    carrier: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _TRACE_HEADERS:
            carrier[name.decode("latin-1")] = value.decode("latin-1")
    return context_of(carrier)


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
