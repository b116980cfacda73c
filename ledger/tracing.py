"""OpenTelemetry tracing: one TracerProvider per process component, and the W3C trace
context that carries a request's trace from the API to the projections' updates.

The chain of spans, and what links each to the next (docs/adr/0009-tracing.md):

    HTTP server span (api/tracing.py, Litestar's OpenTelemetry plugin)
      command <Type>              commands/runtime.py `execute`
        ledger.append             commands/runtime.py `Repository.save`; its traceparent
                                  is stored on every event appended (events.trace_context)
          publish <stream>        ledger/relay.py, a child of the stored context; its own
                                  context goes in the message's `traceparent` header
            apply <projection>    projections/worker.py, a child of the header's context

Each entry point (`ledger serve`, `dev`, `relay`, `project`) makes its providers with
`traced(settings, component)`, passes them down explicitly and shuts them down on the
way out, which exports what is still buffered. Spans go to an OTLP/HTTP collector when
LEDGER_OTLP_ENDPOINT (or the standard OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set. Otherwise nothing would see a span, so none
is recorded (sampler always_off, unless OTEL_TRACES_SAMPLER names one): spans still get
ids and pass the trace on, so events still carry a trace context (a caller's trace id
included) for the relay and the workers to follow, at a fraction of a recorded span's
cost. The SDK reads the other standard variables itself (OTEL_TRACES_SAMPLER_ARG,
OTEL_SDK_DISABLED, ...); a ratio sampler is how to trace a busy ledger cheaply.

Trace contexts that arrive from outside (an HTTP header, a stored column, a NATS header)
are parsed leniently: a malformed one is treated as absent, never as an error.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_NAMESPACE, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Span, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ledger.settings import Settings

COMPONENTS: Final = ("api", "relay", "projections")
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
# The OTLP/HTTP path for traces, appended to a base endpoint as the standard variable does.
TRACES_PATH: Final = "/v1/traces"
STANDARD_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
STANDARD_SAMPLER: Final = "OTEL_TRACES_SAMPLER"

_propagator: Final = TraceContextTextMapPropagator()


def tracer_provider(
    settings: Settings, component: str, *, environ: Mapping[str, str] | None = None
) -> TracerProvider:
    """A provider for one component (`<service name>-<component>`), exporting over OTLP
    when an endpoint is configured, else recording nothing (see the module's doc)."""
    assert component in COMPONENTS, component
    environ = os.environ if environ is None else environ
    exporter = otlp_exporter(settings, environ)
    # None: the SDK's default, or the sampler OTEL_TRACES_SAMPLER names.
    sampler = None if exporter is not None or environ.get(STANDARD_SAMPLER) else ALWAYS_OFF
    resource = Resource.create(
        {
            SERVICE_NAME: f"{settings.service_name}-{component}",
            SERVICE_NAMESPACE: settings.service_name,
        }
    )
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def records(provider: TracerProvider | trace.TracerProvider | None) -> bool:
    """Whether `provider` may record a span: false only for one whose sampler is
    always_off (what `tracer_provider` makes when nothing would see a span). Any other
    provider, None (the global one) included, is taken to record."""
    return getattr(provider, "sampler", None) is not ALWAYS_OFF


def otlp_exporter(settings: Settings, environ: Mapping[str, str]) -> SpanExporter | None:
    """The OTLP/HTTP exporter the settings or the standard variables ask for, if any."""
    if settings.otlp_endpoint is not None:
        endpoint: str | None = settings.otlp_endpoint.rstrip("/") + TRACES_PATH
    elif any(environ.get(name, "").strip() for name in STANDARD_ENDPOINTS):
        endpoint = None  # The exporter reads the standard variables itself.
    else:
        return None
    # Imported here: it brings in protobuf and requests, which only exporting needs.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


@contextlib.contextmanager
def traced(settings: Settings, component: str) -> Iterator[TracerProvider]:
    """A component's provider for the life of the block; shut down (flushed) after it."""
    provider = tracer_provider(settings, component)
    try:
        yield provider
    finally:
        provider.shutdown()


def context_of(headers: Mapping[str, str] | None) -> Context | None:
    """The remote parent that W3C `traceparent` (and `tracestate`) headers name; None when
    they are absent or malformed."""
    if not headers or TRACEPARENT not in headers:
        return None
    carrier = {name: headers[name] for name in (TRACEPARENT, TRACESTATE) if name in headers}
    context = _propagator.extract(carrier)
    return context if span_context_of(context).is_valid else None


@functools.lru_cache(maxsize=1_024)
def context_of_traceparent(traceparent: str | None) -> Context | None:
    """`context_of` for a stored traceparent alone. Remembered: the relay asks twice per
    event, and the events of one append share theirs (a Context is immutable)."""
    return None if traceparent is None else context_of({TRACEPARENT: traceparent})


def span_context_of(context: Context) -> SpanContext:
    return trace.get_current_span(context).get_span_context()


def headers_of(span: Span) -> dict[str, str]:
    """The W3C headers that make the receiver's spans children of `span` (none if invalid)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def traceparent_of(span: Span) -> str | None:
    """`span`'s W3C traceparent, to store with what it wrote; None outside any trace."""
    return headers_of(span).get(TRACEPARENT)
