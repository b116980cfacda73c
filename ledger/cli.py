"""The `ledger` command: `ledger dev`, `ledger migrate`, `ledger serve`.

Options override the LEDGER_* environment variables of the same meaning. Each command
imports its machinery lazily so that `ledger --help` stays instant.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from ledger.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        settings = _settings(arguments)
    except SettingsError as error:
        print(f"ledger: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    command: str = arguments.command
    if command == "dev":
        from ledger.dev import run_dev

        return run_dev(settings)
    if command == "serve":
        return _serve(settings)
    assert command == "migrate"
    return _migrate(settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="The event-sourced trading ledger.")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="embedded PostgreSQL and NATS, migrations, the API")
    dev.add_argument("--data", type=Path, help="data folder (LEDGER_DATA_DIR, default ./.ledger)")
    _add_http_options(dev)

    serve = commands.add_parser("serve", help="the API against existing PostgreSQL and NATS")
    serve.add_argument("--database-url", help="PostgreSQL URL (LEDGER_DATABASE_URL)")
    serve.add_argument("--nats-url", help="NATS URL (LEDGER_NATS_URL)")
    _add_http_options(serve)

    migrate = commands.add_parser("migrate", help="apply pending SQL migrations")
    migrate.add_argument("--database-url", help="PostgreSQL URL (LEDGER_DATABASE_URL)")
    return parser


def _add_http_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="HTTP address (LEDGER_HTTP_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (LEDGER_HTTP_PORT, default 8000)")


def _settings(arguments: argparse.Namespace) -> Settings:
    """The environment's settings, overridden by the options given on the command line."""
    settings = Settings.from_env()
    overrides = {
        "data_dir": getattr(arguments, "data", None),
        "http_host": getattr(arguments, "host", None),
        "http_port": getattr(arguments, "port", None),
        "database_url": getattr(arguments, "database_url", None),
        "nats_url": getattr(arguments, "nats_url", None),
    }
    port = overrides["http_port"]
    if port is not None and not 1 <= port <= 65535:
        raise SettingsError(f"--port must be between 1 and 65535, got {port}")
    given = {name: value for name, value in overrides.items() if value is not None}
    return msgspec.structs.replace(settings, **given)


def _serve(settings: Settings) -> int:
    if settings.database_url is None or settings.nats_url is None:
        print("ledger serve: set LEDGER_DATABASE_URL and LEDGER_NATS_URL", file=sys.stderr)
        return 2
    from ledger.dev import run_serve

    return run_serve(settings)


def _migrate(settings: Settings) -> int:
    if settings.database_url is None:
        print("ledger migrate: set LEDGER_DATABASE_URL or --database-url", file=sys.stderr)
        return 2
    from ledger.migrate import migrate

    applied = asyncio.run(migrate(settings.database_url))
    print("\n".join(applied) if applied else "no pending migration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
