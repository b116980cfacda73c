"""Prometheus metrics, served at /metrics by Litestar's PrometheusController.

- HTTP: Litestar's PrometheusMiddleware, by method, route template (never the raw path,
  so ids do not multiply the series) and status: `ledger_http_requests_total`,
  `ledger_http_request_duration_seconds`, `ledger_http_requests_in_progress`.
- Commands: `ledger_commands_total{command, outcome}` (outcome "success", "replayed" or
  the refusal's error code), `ledger_command_duration_seconds{command}`,
  `ledger_appends_total` and `ledger_events_appended_total`, fed by the command side's
  `on_executed` hook.
- Housekeeping: `ledger_housekeeping_deleted_total{table}` (api/housekeeping.py).
- Lag, read from PostgreSQL at each scrape: the relay's cursors and lag, and each
  projection's checkpoint and lag. Each query is bounded by `ops_query_timeout_s`; one
  that fails or times out sets its gauges to NaN (unknown), sets
  `ledger_lag_up{source}` to 0 and counts `ledger_lag_errors_total{source, reason}`,
  and the scrape still answers with everything else.

The metrics live in prometheus_client's default registry, one per process. Under
`ledger serve --workers N` every worker writes them to a folder they share
(PROMETHEUS_MULTIPROC_DIR, ledger/serve_workers.py) and the controller merges it at each
scrape: counters and histograms add up over the workers; the lag gauges, which the
scraped worker has just read from PostgreSQL, take the most recent value of any worker
(`mostrecent`; the mode is ignored in a single process).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any, Final

from litestar import Request
from litestar._asgi.utils import wrap_in_exception_handler
from litestar.datastructures import State
from litestar.plugins.prometheus import (
    PrometheusConfig,
    PrometheusController,
    PrometheusMiddleware,
)
from litestar.types import ASGIApp
from prometheus_client import Counter, Gauge, Histogram

from api.ops import TIMEOUT_TEXT, bounded
from commands.runtime import Executed
from ledger.relay_lag import RelayLag, relay_lag
from ledger.settings import Settings
from projections.lag import ProjectionLag, lag
from projections.registry import NAMES

logger = logging.getLogger(__name__)

PATH: Final = "/metrics"


def _latest(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    """A gauge whose value, merged over several workers, is the one set last."""
    return Gauge(name, documentation, labels, multiprocess_mode="mostrecent")


COMMANDS: Final = Counter(
    "ledger_commands_total",
    "Commands executed, by command type and outcome (success, replayed or error code).",
    ["command", "outcome"],
)
COMMAND_DURATION: Final = Histogram(
    "ledger_command_duration_seconds",
    "Time to load, decide and append a command, retries included.",
    ["command"],
)
APPENDS: Final = Counter("ledger_appends_total", "Appends that wrote events.")
EVENTS_APPENDED: Final = Counter("ledger_events_appended_total", "Events appended.")

RELAY_SEQUENCED: Final = _latest("ledger_relay_sequenced", "Last sequence numbered by the relay.")
RELAY_PUBLISHED: Final = _latest("ledger_relay_published", "Last sequence acked by JetStream.")
RELAY_EVENTS_BEHIND: Final = _latest(
    "ledger_relay_events_behind",
    "Committed events not yet published (those not yet numbered counted up to 10,000).",
)
RELAY_SECONDS_BEHIND: Final = _latest(
    "ledger_relay_seconds_behind", "Age of the oldest event not yet published; 0 when none."
)
_RELAY_GAUGES: Final = (RELAY_SEQUENCED, RELAY_PUBLISHED, RELAY_EVENTS_BEHIND, RELAY_SECONDS_BEHIND)

PROJECTION_CHECKPOINT: Final = _latest(
    "ledger_projection_checkpoint", "Last sequence applied by the projection.", ["projection"]
)
PROJECTION_EVENTS_BEHIND: Final = _latest(
    "ledger_projection_events_behind", "Sequenced events not yet applied.", ["projection"]
)
PROJECTION_SECONDS_BEHIND: Final = _latest(
    "ledger_projection_seconds_behind",
    "Age of the oldest event not yet applied; 0 when none.",
    ["projection"],
)
PROJECTION_FAILING: Final = _latest(
    "ledger_projection_failing", "1 when a poison event parked the projection.", ["projection"]
)
_PROJECTION_GAUGES: Final = (
    PROJECTION_CHECKPOINT,
    PROJECTION_EVENTS_BEHIND,
    PROJECTION_SECONDS_BEHIND,
    PROJECTION_FAILING,
)

LAG_UP: Final = _latest(
    "ledger_lag_up", "1 when this scrape read the lag from PostgreSQL in time, else 0.", ["source"]
)
LAG_ERRORS: Final = Counter(
    "ledger_lag_errors_total",
    "Scrapes whose lag query failed, by source and reason (timeout or the error type).",
    ["source", "reason"],
)


def command_executed(executed: Executed) -> None:
    """The command side's `on_executed` hook."""
    COMMANDS.labels(executed.command, executed.outcome).inc()
    COMMAND_DURATION.labels(executed.command).observe(executed.duration_s)
    if executed.events_appended > 0:
        APPENDS.inc()
        EVENTS_APPENDED.inc(executed.events_appended)


async def refresh_lag(request: Request[Any, Any, State]) -> None:
    """Before each scrape: read the relay's and the projections' lag, each bounded."""
    state = request.app.state
    settings: Settings = state.settings
    timeout_s = settings.ops_query_timeout_s
    relay, projections = await asyncio.gather(
        bounded(lambda: relay_lag(state.pool, timeout_s), timeout_s),
        bounded(lambda: lag(state.pool), timeout_s),
    )
    if isinstance(relay, RelayLag):
        _show_relay(relay)
    else:
        _lag_failed("relay", relay)
        for gauge in _RELAY_GAUGES:
            gauge.set(math.nan)
    if isinstance(projections, list):
        _show_projections(projections)
    else:
        _lag_failed("projections", projections)
        # NaN, not cleared: under several workers a cleared gauge would leave the others'
        # last values in the merged scrape, while NaN is the most recent value of all.
        for gauge in _PROJECTION_GAUGES:
            for name in NAMES:
                gauge.labels(name).set(math.nan)


def _show_relay(found: RelayLag) -> None:
    LAG_UP.labels("relay").set(1)
    RELAY_SEQUENCED.set(found.sequenced)
    RELAY_PUBLISHED.set(found.published)
    RELAY_EVENTS_BEHIND.set(found.events_behind)
    RELAY_SECONDS_BEHIND.set(found.seconds_behind)


def _show_projections(found: list[ProjectionLag]) -> None:
    LAG_UP.labels("projections").set(1)
    for item in found:
        PROJECTION_CHECKPOINT.labels(item.name).set(item.checkpoint)
        PROJECTION_EVENTS_BEHIND.labels(item.name).set(item.events_behind)
        PROJECTION_SECONDS_BEHIND.labels(item.name).set(item.seconds_behind)
        PROJECTION_FAILING.labels(item.name).set(int(item.failing))


def _lag_failed(source: str, error: str) -> None:
    reason = "timeout" if TIMEOUT_TEXT in error else "error"
    LAG_UP.labels(source).set(0)
    LAG_ERRORS.labels(source, reason).inc()
    logger.warning("metrics: %s lag unknown: %s", source, error)


class HttpMetricsMiddleware(PrometheusMiddleware):
    """Litestar's middleware, but errors raised further in count with their own status.

    Middleware after this one (authentication, rate limits) reports a refusal by raising;
    the stock middleware would then count the request as a 200. Wrapping what follows in
    Litestar's exception handler turns the exception into its response first, which this
    middleware sees like any other. (`wrap_in_exception_handler` is Litestar's own
    helper for the same purpose on each route; it is not exported, hence the import.)
    """

    def __init__(self, app: ASGIApp, config: PrometheusConfig) -> None:
        super().__init__(wrap_in_exception_handler(app), config)


def http_metrics() -> PrometheusConfig:
    return PrometheusConfig(
        app_name="ledger",
        prefix="ledger_http",
        group_path=True,
        middleware_class=HttpMetricsMiddleware,
    )


class MetricsController(PrometheusController):
    """GET /metrics in the Prometheus text format; the lag is read at each scrape."""

    path = PATH
    tags = ["ops"]
    # Litestar's documented way; mypy reads a function assigned in a class body as a method.
    before_request = refresh_lag  # type: ignore[assignment]
