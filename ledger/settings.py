"""Settings of the ledger, read once from LEDGER_* environment variables.

A bad value stops the process at startup with the name of the variable at fault,
rather than surfacing later as a confusing connection or bind error.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import msgspec

LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")
DATABASE_SCHEMES: Final = ("postgresql", "postgres")
NATS_SCHEMES: Final = ("nats", "tls", "ws", "wss")
# HS256 keys shorter than the hash output weaken it; PyJWT warns below 32 bytes too.
JWT_SECRET_LENGTH_MIN: Final = 32
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
    # How long a query with consistent_with= waits for its projection (api/queries/waiting.py).
    consistency_wait_s: float = 2.0

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
            consistency_wait_s=_consistency_wait_s(
                env, "LEDGER_CONSISTENCY_WAIT_S", defaults.consistency_wait_s
            ),
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
