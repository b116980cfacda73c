"""Settings of the ledger, read once from LEDGER_* environment variables.

A bad value stops the process at startup with the name of the variable at fault,
rather than surfacing later as a confusing connection or bind error.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import msgspec

LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS: Final = ("json", "text")
DATABASE_SCHEMES: Final = ("postgresql", "postgres")
NATS_SCHEMES: Final = ("nats", "tls", "ws", "wss")
OTLP_SCHEMES: Final = ("http", "https")
# An OpenTelemetry service name prefix: each process adds its component (ledger-api, ...).
_SERVICE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# HS256 keys shorter than the hash output weaken it; PyJWT warns below 32 bytes too.
JWT_SECRET_LENGTH_MIN: Final = 32
# argon2 needs 8 KiB per lane at least; the parallelism setting is checked against it.
ARGON2_MEMORY_KIB_MIN: Final = 8
INTEGER_MAX: Final = 2**31 - 1
SECONDS_MAX: Final = 86_400.0
JWT_SECRET_FILE: Final = "jwt_secret"  # noqa: S105 (a file name, not a secret)
CONSISTENCY_WAIT_S_MAX: Final = 30.0


class SettingsError(ValueError):
    """Raised when an environment variable has a value the ledger cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    nats_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    data_dir: Path = Path(".ledger")
    jwt_secret: str | None = None
    log_level: str = "info"
    # One JSON object per line (for log shippers), or plain text for a terminal.
    log_format: str = "json"
    # Requests per minute: per signed-in user (else per client address) on every route
    # but the ops ones, and per client address on sign-up, sign-in and refresh. 0: off.
    rate_limit_per_minute: int = 600
    auth_rate_limit_per_minute: int = 20
    # /ready fails when the oldest event not yet published (relay) or not yet applied
    # (any projection) has waited at least this long; 0: as soon as one waits at all.
    ready_relay_lag_s_max: float = 30.0
    ready_projection_lag_s_max: float = 60.0
    # The bound on each database query of /ready and /metrics.
    ops_query_timeout_s: float = 2.0
    # argon2id cost of new password hashes: argon2-cffi's defaults (RFC 9106's second
    # recommended option). Lower them only where nothing real is protected (the tests).
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    service_name: str = "ledger"
    otlp_endpoint: str | None = None
    # How long a query with consistent_with= waits for its projection (api/queries/waiting.py).
    consistency_wait_s: float = 2.0
    # How often each API process deletes expired sign-in rows and old idempotent answers
    # (api/housekeeping.py); 0 turns it off.
    housekeeping_interval_s: float = 600.0
    # How long an idempotent command's answer is kept for a retry to get it back.
    idempotency_retention_s: float = 86_400.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read LEDGER_* variables; unset or empty ones take their defaults."""
        env = {
            name: value
            for name, value in (os.environ if environ is None else environ).items()
            if name.startswith("LEDGER_") and value.strip()
        }
        defaults = cls()
        return cls(
            database_url=_url(env, "LEDGER_DATABASE_URL", DATABASE_SCHEMES),
            nats_url=_url(env, "LEDGER_NATS_URL", NATS_SCHEMES),
            http_host=env.get("LEDGER_HTTP_HOST", defaults.http_host).strip(),
            http_port=_port(env, "LEDGER_HTTP_PORT", defaults.http_port),
            data_dir=Path(env.get("LEDGER_DATA_DIR", str(defaults.data_dir))).expanduser(),
            jwt_secret=_jwt_secret(env, "LEDGER_JWT_SECRET"),
            log_level=_log_level(env, "LEDGER_LOG_LEVEL", defaults.log_level),
            log_format=_choice(env, "LEDGER_LOG_FORMAT", LOG_FORMATS, defaults.log_format),
            rate_limit_per_minute=_integer(
                env, "LEDGER_RATE_LIMIT_PER_MINUTE", defaults.rate_limit_per_minute, 0
            ),
            auth_rate_limit_per_minute=_integer(
                env, "LEDGER_AUTH_RATE_LIMIT_PER_MINUTE", defaults.auth_rate_limit_per_minute, 0
            ),
            ready_relay_lag_s_max=_seconds(
                env, "LEDGER_READY_RELAY_LAG_S_MAX", defaults.ready_relay_lag_s_max, 0.0
            ),
            ready_projection_lag_s_max=_seconds(
                env, "LEDGER_READY_PROJECTION_LAG_S_MAX", defaults.ready_projection_lag_s_max, 0.0
            ),
            ops_query_timeout_s=_seconds(
                env, "LEDGER_OPS_QUERY_TIMEOUT_S", defaults.ops_query_timeout_s, 0.01
            ),
            argon2_time_cost=_integer(env, "LEDGER_ARGON2_TIME_COST", defaults.argon2_time_cost, 1),
            argon2_memory_kib=_integer(
                env, "LEDGER_ARGON2_MEMORY_KIB", defaults.argon2_memory_kib, ARGON2_MEMORY_KIB_MIN
            ),
            argon2_parallelism=_integer(
                env, "LEDGER_ARGON2_PARALLELISM", defaults.argon2_parallelism, 1
            ),
            service_name=_service_name(env, "LEDGER_SERVICE_NAME", defaults.service_name),
            otlp_endpoint=_otlp_endpoint(env, "LEDGER_OTLP_ENDPOINT"),
            consistency_wait_s=_consistency_wait_s(
                env, "LEDGER_CONSISTENCY_WAIT_S", defaults.consistency_wait_s
            ),
            housekeeping_interval_s=_seconds(
                env, "LEDGER_HOUSEKEEPING_INTERVAL_S", defaults.housekeeping_interval_s, 0.0
            ),
            idempotency_retention_s=_seconds(
                env, "LEDGER_IDEMPOTENCY_RETENTION_S", defaults.idempotency_retention_s, 60.0
            ),
        )

    def __post_init__(self) -> None:
        if self.argon2_memory_kib < ARGON2_MEMORY_KIB_MIN * self.argon2_parallelism:
            raise SettingsError(
                f"LEDGER_ARGON2_MEMORY_KIB must be at least {ARGON2_MEMORY_KIB_MIN} KiB per lane "
                f"of LEDGER_ARGON2_PARALLELISM ({self.argon2_parallelism})"
            )

    def with_dev_jwt_secret(self) -> Settings:
        """These settings with a JWT secret, the one persisted in the data dir if unset."""
        if self.jwt_secret is not None:
            return self
        return msgspec.structs.replace(self, jwt_secret=load_or_create_jwt_secret(self.data_dir))


def load_or_create_jwt_secret(data_dir: Path) -> str:
    """A random secret kept in DATA_DIR/jwt_secret, so that dev tokens survive a restart."""
    path = data_dir / JWT_SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two first starts at once must not each write their own secret.
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(48))
    secret = path.read_text().strip()
    if len(secret) < JWT_SECRET_LENGTH_MIN:
        raise SettingsError(f"{path} holds a JWT secret shorter than {JWT_SECRET_LENGTH_MIN}")
    return secret


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    # nats-py accepts a comma-separated list of servers; each one must be well formed.
    for url in value.split(","):
        parts = urlsplit(url.strip())
        if parts.scheme not in schemes or not parts.netloc:
            expected = " or ".join(f"{scheme}://" for scheme in schemes)
            raise SettingsError(f"{name} must be a URL starting with {expected}, got {url!r}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None:
        return default
    if not value.strip().isdigit() or not 1 <= int(value) <= 65535:
        raise SettingsError(f"{name} must be a TCP port between 1 and 65535, got {value!r}")
    return int(value)


def _jwt_secret(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is not None and len(value) < JWT_SECRET_LENGTH_MIN:
        raise SettingsError(f"{name} must be at least {JWT_SECRET_LENGTH_MIN} characters long")
    return value


def _log_level(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip().lower()
    if value not in LOG_LEVELS:
        raise SettingsError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, default).strip().lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    value = env.get(name)
    if value is None:
        return default
    if not value.strip().isdigit() or not minimum <= int(value) <= INTEGER_MAX:
        raise SettingsError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return int(value)


def _seconds(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    value = env.get(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    # NaN fails both comparisons, so "nan" is refused like any other non-number.
    if not minimum <= seconds <= SECONDS_MAX:
        raise SettingsError(
            f"{name} must be a number of seconds from {minimum:g} to {SECONDS_MAX:g}, got {value!r}"
        )
    return seconds


def _service_name(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip()
    if not _SERVICE_NAME.match(value):
        raise SettingsError(f"{name} must be 1-63 of [A-Za-z0-9._-], got {value!r}")
    return value


def _otlp_endpoint(env: Mapping[str, str], name: str) -> str | None:
    """The OTLP/HTTP collector's base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT."""
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in OTLP_SCHEMES or not parts.netloc:
        raise SettingsError(
            f"{name} must be a URL starting with http:// or https://, got {value!r}"
        )
    return value


def _consistency_wait_s(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= CONSISTENCY_WAIT_S_MAX:  # also refuses nan
        raise SettingsError(
            f"{name} must be a number of seconds in (0, {CONSISTENCY_WAIT_S_MAX:g}], got {value!r}"
        )
    return seconds
