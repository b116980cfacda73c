"""The ops settings from LEDGER_* variables, the default password cost, JSON log lines."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from argon2 import PasswordHasher

from api.passwords import HashCost
from ledger.logs import ContextFilter, JsonFormatter, log_context
from ledger.settings import Settings, SettingsError


def test_defaults_are_the_production_ones() -> None:
    settings = Settings.from_env({})
    assert settings.log_format == "json"
    assert settings.rate_limit_per_minute == 600
    assert settings.auth_rate_limit_per_minute == 20
    assert settings.ready_relay_lag_s_max == 30.0
    assert settings.ready_projection_lag_s_max == 60.0
    assert settings.ops_query_timeout_s == 2.0
    assert settings.housekeeping_interval_s == 600.0
    assert settings.idempotency_retention_s == 86_400.0


def test_the_default_password_cost_is_argon2_cffis() -> None:
    default = PasswordHasher()
    cost = HashCost.of(Settings.from_env({}))
    assert cost == HashCost()
    assert (cost.time_cost, cost.memory_kib, cost.parallelism) == (
        default.time_cost,
        default.memory_cost,
        default.parallelism,
    )
    assert "m=65536,t=3,p=4" in cost.hasher().hash("a password of twelve")


def test_ops_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "LEDGER_LOG_FORMAT": "TEXT",
            "LEDGER_RATE_LIMIT_PER_MINUTE": "0",
            "LEDGER_AUTH_RATE_LIMIT_PER_MINUTE": "5",
            "LEDGER_READY_RELAY_LAG_S_MAX": "0",
            "LEDGER_READY_PROJECTION_LAG_S_MAX": "2.5",
            "LEDGER_OPS_QUERY_TIMEOUT_S": "0.25",
            "LEDGER_ARGON2_TIME_COST": "1",
            "LEDGER_ARGON2_MEMORY_KIB": "8",
            "LEDGER_ARGON2_PARALLELISM": "1",
            "LEDGER_HOUSEKEEPING_INTERVAL_S": "0",
            "LEDGER_IDEMPOTENCY_RETENTION_S": "3600",
        }
    )
    assert settings.log_format == "text"
    assert (settings.housekeeping_interval_s, settings.idempotency_retention_s) == (0.0, 3600.0)
    assert (settings.rate_limit_per_minute, settings.auth_rate_limit_per_minute) == (0, 5)
    assert (settings.ready_relay_lag_s_max, settings.ready_projection_lag_s_max) == (0.0, 2.5)
    assert settings.ops_query_timeout_s == 0.25
    assert HashCost.of(settings) == HashCost(time_cost=1, memory_kib=8, parallelism=1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LEDGER_LOG_FORMAT", "xml"),
        ("LEDGER_RATE_LIMIT_PER_MINUTE", "-1"),
        ("LEDGER_RATE_LIMIT_PER_MINUTE", "ten"),
        ("LEDGER_AUTH_RATE_LIMIT_PER_MINUTE", "1.5"),
        ("LEDGER_READY_RELAY_LAG_S_MAX", "-1"),
        ("LEDGER_READY_PROJECTION_LAG_S_MAX", "nan"),
        ("LEDGER_OPS_QUERY_TIMEOUT_S", "0"),
        ("LEDGER_OPS_QUERY_TIMEOUT_S", "inf"),
        ("LEDGER_ARGON2_TIME_COST", "0"),
        ("LEDGER_ARGON2_MEMORY_KIB", "7"),
        ("LEDGER_ARGON2_PARALLELISM", "0"),
        ("LEDGER_ARGON2_PARALLELISM", "99999999999"),
        ("LEDGER_HOUSEKEEPING_INTERVAL_S", "-1"),
        ("LEDGER_IDEMPOTENCY_RETENTION_S", "59"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_argon2_memory_must_cover_every_lane() -> None:
    with pytest.raises(SettingsError, match="LEDGER_ARGON2_MEMORY_KIB"):
        Settings.from_env({"LEDGER_ARGON2_MEMORY_KIB": "16", "LEDGER_ARGON2_PARALLELISM": "4"})


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("test").makeRecord(
        "test", logging.INFO, __file__, 1, message, (), None, extra=extra
    )
    ContextFilter().filter(record)
    return record


def test_a_json_line_has_the_extra_fields_and_the_context() -> None:
    with log_context(request_id="r-1", user="u"):
        record = _record("hello %s", status=200)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello %s"
    assert line["level"] == "info"
    assert line["logger"] == "test"
    assert line["time"].endswith("+00:00")
    assert (line["request_id"], line["user"], line["status"]) == ("r-1", "u", 200)
    assert "exception" not in line
    # Outside the context nothing of it remains.
    assert "request_id" not in json.loads(JsonFormatter().format(_record("later")))


def test_a_json_line_carries_the_traceback_and_what_json_cannot_hold() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("test").makeRecord(
            "test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info(), extra={"at": object}
        )
    line = json.loads(JsonFormatter().format(record))
    assert "Traceback" in line["exception"]
    assert "ValueError: boom" in line["exception"]
    assert line["at"] == str(object)
    assert "\n" not in JsonFormatter().format(record)
