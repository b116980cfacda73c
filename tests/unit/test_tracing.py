"""Tracing without servers: settings, trace-context parsing, and a real OTLP/HTTP export
to a collector stand-in on the loopback."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from uuid import uuid4

import msgspec
import pytest
from nats.aio.msg import Msg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, NoOpTracerProvider, SpanKind, StatusCode

from ledger import relay, tracing
from ledger.sequencer import SequencedEvent
from ledger.settings import Settings, SettingsError
from ledger.store import RecordedEvent
from projections import runner as runner_module
from projections.base import LoggedEvent
from projections.registry import PROJECTIONS
from projections.runner import Runner
from projections.worker import WorkerOptions

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MALFORMED = [
    "",
    "garbage",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    "x" * 10_000,
]


def test_settings_read_the_service_name_and_the_otlp_endpoint() -> None:
    settings = Settings.from_env(
        {"LEDGER_SERVICE_NAME": "books", "LEDGER_OTLP_ENDPOINT": "http://collector:4318"}
    )
    assert settings.service_name == "books"
    assert settings.otlp_endpoint == "http://collector:4318"
    assert Settings.from_env({}).service_name == "ledger"
    assert Settings.from_env({}).otlp_endpoint is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LEDGER_OTLP_ENDPOINT", "collector:4318"),
        ("LEDGER_OTLP_ENDPOINT", "grpc://collector:4317"),
        ("LEDGER_SERVICE_NAME", "two words"),
        ("LEDGER_SERVICE_NAME", "x" * 64),
    ],
)
def test_bad_tracing_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_a_valid_traceparent_is_a_remote_parent() -> None:
    context = tracing.context_of_traceparent(VALID)
    assert context is not None
    span_context = tracing.span_context_of(context)
    assert span_context.is_remote
    assert span_context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span_context.span_id == 0xB7AD6B7169203331


@pytest.mark.parametrize("traceparent", MALFORMED)
def test_a_malformed_traceparent_is_ignored(traceparent: str) -> None:
    assert tracing.context_of_traceparent(traceparent) is None
    assert tracing.context_of({"traceparent": traceparent, "tracestate": "a=b"}) is None


def test_no_headers_or_no_traceparent_is_no_parent() -> None:
    assert tracing.context_of(None) is None
    assert tracing.context_of({}) is None
    assert tracing.context_of({"Nats-Msg-Id": "x"}) is None
    assert tracing.context_of_traceparent(None) is None


def test_a_span_outside_any_trace_has_no_traceparent() -> None:
    assert tracing.traceparent_of(INVALID_SPAN) is None
    assert tracing.headers_of(INVALID_SPAN) == {}


def test_a_child_of_a_traceparent_keeps_its_trace_and_tracestate() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    parent = tracing.context_of({"traceparent": VALID, "tracestate": "vendor=1"})
    span = provider.get_tracer("test").start_span("child", context=parent)
    headers = tracing.headers_of(span)
    span.end()
    child = exporter.get_finished_spans()[0]
    assert child.parent is not None
    assert child.parent.span_id == 0xB7AD6B7169203331
    assert headers["traceparent"] == f"00-{VALID[3:35]}-{child.context.span_id:016x}-01"
    assert headers["tracestate"] == "vendor=1"
    assert tracing.traceparent_of(span) == headers["traceparent"]


def test_without_an_endpoint_nothing_is_exported() -> None:
    assert tracing.otlp_exporter(Settings(), {}) is None
    assert tracing.otlp_exporter(Settings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": " "}) is None


def test_the_standard_variable_turns_export_on() -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    assert tracing.otlp_exporter(Settings(), environ) is not None


class Collector:
    """An OTLP/HTTP collector stand-in: keeps every export request it is sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, ExportTraceServiceRequest]] = []
        self.received = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.requests.append((self.path, request))
                collector.received.set()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


def test_spans_are_exported_over_otlp_http_when_an_endpoint_is_set(collector: Collector) -> None:
    settings = Settings(service_name="books", otlp_endpoint=collector.url)
    with (
        tracing.traced(settings, "relay") as provider,
        provider.get_tracer("test").start_as_current_span("publish LEDGER"),
    ):
        pass
    # Shutting the provider down flushed the batch: the export has been answered.
    assert collector.received.is_set()
    path, request = collector.requests[0]
    assert path == "/v1/traces"
    resource = request.resource_spans[0].resource
    attributes = {item.key: item.value.string_value for item in resource.attributes}
    assert attributes["service.name"] == "books-relay"
    assert attributes["service.namespace"] == "books"
    spans = [span for scope in request.resource_spans[0].scope_spans for span in scope.spans]
    assert [span.name for span in spans] == ["publish LEDGER"]


def sequenced(trace_context: str | None) -> SequencedEvent:
    event = RecordedEvent(
        position=1,
        tx=1,
        event_id=uuid4(),
        stream_id=uuid4(),
        stream_type="account",
        version=1,
        topic="ledger.domain.account:AccountOpened",
        schema_version=1,
        recorded_at=datetime.now(UTC),
        actor=None,
        correlation_id=None,
        causation_id=None,
        idempotency_key=None,
        data=b"{}",
        prev_hash=bytes(32),
        hash=bytes(32),
        trace_context=trace_context,
    )
    return SequencedEvent(7, 1, bytes(32), event)


@pytest.mark.parametrize("traceparent", [None, *MALFORMED])
def test_the_relay_publishes_an_untraced_event_without_span_or_header(
    traceparent: str | None,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    item = sequenced(traceparent)
    headers = relay.headers_of(item)
    assert "traceparent" not in headers
    span = relay.publish_span(provider.get_tracer("test"), relay.RelayOptions(), item, headers)
    assert span is None
    assert "traceparent" not in headers
    assert exporter.get_finished_spans() == ()


def test_the_relay_publishes_a_traced_event_in_a_child_span_whose_context_it_sends() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    item = sequenced(VALID)
    headers = relay.headers_of(item)
    assert headers["traceparent"] == VALID  # The stored context, before the span.
    span = relay.publish_span(provider.get_tracer("test"), relay.RelayOptions(), item, headers)
    assert span is not None
    span.end()
    (published,) = exporter.get_finished_spans()
    assert published.kind is SpanKind.PRODUCER
    assert published.name == "publish LEDGER"
    assert published.parent is not None
    assert published.parent.span_id == 0xB7AD6B7169203331
    assert headers["traceparent"] == f"00-{VALID[3:35]}-{published.context.span_id:016x}-01"
    assert published.attributes is not None
    assert published.attributes["ledger.sequence"] == 7
    assert published.attributes["messaging.message.id"] == str(item.event.event_id)


def test_without_a_tracer_provider_the_stored_context_is_sent_as_it_is() -> None:
    item = sequenced(VALID)
    headers = relay.headers_of(item)
    span = relay.publish_span(
        NoOpTracerProvider().get_tracer("test"), relay.RelayOptions(), item, headers
    )
    assert span is not None
    assert headers["traceparent"] == VALID


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def message(sequence: int, topic: str, headers: dict[str, str]) -> tuple[Msg, LoggedEvent]:
    event = LoggedEvent(
        sequence=sequence,
        stream_id=uuid4(),
        stream_type="account",
        version=1,
        topic=topic,
        recorded_at=datetime.now(UTC),
        data=msgspec.Raw(b"{}"),
    )
    return Msg(None, subject="s", data=b"", headers=headers), event  # type: ignore[arg-type]


def test_a_batch_of_several_traces_gets_an_apply_span_per_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    projection = PROJECTIONS["accounts"]
    handled, ignored = sorted(projection.topics)[0], "tests:NotHandled"
    batch = [
        message(1, handled, {"traceparent": traceparent(0xA, 0xA1)}),
        message(2, handled, {"traceparent": traceparent(0xB, 0xB1)}),
        message(3, handled, {"traceparent": traceparent(0xA, 0xA2)}),
        message(4, handled, {}),
        message(5, ignored, {"traceparent": traceparent(0xC, 0xC1)}),
        message(6, handled, {"traceparent": "00-garbage-01"}),
    ]
    runner = Runner(
        projection,
        None,  # type: ignore[arg-type]
        WorkerOptions(),
        provider.get_tracer("test"),
    )
    spans = runner._apply_spans([m for m, _ in batch], [e for _, e in batch])
    runner_module._end_applied(spans, checkpoint=2)  # Parked at 3: trace A is not all applied.

    by_trace = {span.context.trace_id: span for span in exporter.get_finished_spans()}
    assert set(by_trace) == {0xA, 0xB}  # C is not this projection's; 4 and 6 have none.
    first, second = by_trace[0xA], by_trace[0xB]
    assert first.name == second.name == "apply accounts"
    assert first.parent is not None
    assert first.parent.span_id == 0xA1
    assert [link.context.span_id for link in first.links] == [0xA2]
    assert second.parent is not None
    assert second.parent.span_id == 0xB1
    assert not second.links
    assert first.attributes is not None
    assert first.attributes["ledger.batch.traces"] == 2
    assert first.attributes["messaging.batch.message_count"] == 6
    assert (
        first.attributes["ledger.sequence.first"],
        first.attributes["ledger.sequence.last"],
    ) == (1, 3)
    assert first.status.status_code is StatusCode.ERROR
    assert second.status.status_code is StatusCode.UNSET


def test_without_an_exporter_spans_are_not_recorded_but_the_trace_goes_on() -> None:
    provider = tracing.tracer_provider(Settings(), "api", environ={})
    tracer = provider.get_tracer("test")
    root = tracer.start_span("root")
    assert not root.is_recording()
    assert root.get_span_context().is_valid
    stored = tracing.traceparent_of(root)
    assert stored is not None
    # The sampled flag is off: nobody records it downstream either.
    assert not int(stored.rsplit("-", 1)[1], 16) & 0x01
    child = tracer.start_span("child", context=tracing.context_of({"traceparent": VALID}))
    assert child.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert not child.is_recording()


def test_a_sampler_named_in_the_environment_records_even_without_an_exporter() -> None:
    environ = {"OTEL_TRACES_SAMPLER": "always_on"}
    provider = tracing.tracer_provider(Settings(), "api", environ=environ)
    assert provider.get_tracer("test").start_span("root").is_recording()
