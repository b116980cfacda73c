"""The `ledger` command: dev, serve, migrate, relay, project, users create, audit verify.

Options override the LEDGER_* environment variables of the same meaning. Each command
imports its machinery lazily so that `ledger --help` stays instant.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec

from ledger import heap
from ledger.logs import configure_logging
from ledger.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        settings = _settings(arguments)
    except SettingsError as error:
        print(f"ledger: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    command: str = arguments.command
    if command == "dev":
        from ledger.dev import run_dev

        return run_dev(settings)
    if command == "serve":
        return _serve(settings, arguments.workers)
    if command == "relay":
        return _relay(settings)
    if command == "project":
        return _project(settings, arguments.names, arguments.rebuild)
    if command == "users":
        return _create_user(settings, arguments.email, arguments.role)
    if command == "audit":
        return _audit_verify(settings, arguments.from_sequence)
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
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing the port (default 1; about one per core)",
    )
    _add_http_options(serve)

    migrate = commands.add_parser("migrate", help="apply pending SQL migrations")
    migrate.add_argument("--database-url", help="PostgreSQL URL (LEDGER_DATABASE_URL)")

    relay = commands.add_parser("relay", help="sequence the log and publish it to JetStream")
    _add_server_options(relay)

    project = commands.add_parser("project", help="projection workers, or a rebuild")
    project.add_argument("names", nargs="*", default=["all"], help="read models (default all)")
    project.add_argument("--rebuild", metavar="NAME|all", help="rebuild from ledger.events")
    _add_server_options(project)

    users = commands.add_parser("users", help="manage users")
    users_commands = users.add_subparsers(dest="users_command", required=True)
    create = users_commands.add_parser("create", help="create a user (password read from stdin)")
    create.add_argument("--email", required=True)
    create.add_argument(
        "--role", required=True, choices=["admin", "trader", "analyst", "auditor", "execution"]
    )
    create.add_argument("--database-url", help="PostgreSQL URL (LEDGER_DATABASE_URL)")

    audit = commands.add_parser("audit", help="verify the log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="the global hash chain and digests, then every stream's chain"
    )
    verify.add_argument(
        "--from-sequence", type=int, default=1, help="start of the global chain (default 1)"
    )
    verify.add_argument("--database-url", help="PostgreSQL URL (LEDGER_DATABASE_URL)")
    return parser


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (LEDGER_DATABASE_URL)")
    parser.add_argument("--nats-url", help="NATS URL (LEDGER_NATS_URL)")


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


def _serve(settings: Settings, workers: int) -> int:
    if settings.database_url is None or settings.nats_url is None:
        print("ledger serve: set LEDGER_DATABASE_URL and LEDGER_NATS_URL", file=sys.stderr)
        return 2
    from ledger.serve_workers import WORKERS_MAX, serve_workers

    if not 1 <= workers <= WORKERS_MAX:
        print(f"ledger serve: --workers must be between 1 and {WORKERS_MAX}", file=sys.stderr)
        return 2
    if workers > 1:
        return serve_workers(settings, workers)
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


def _run_until_signal(work: Callable[[asyncio.Event], Awaitable[object]]) -> object:
    """Run `work(stop)` until it returns; SIGINT or SIGTERM sets `stop` for a clean exit."""

    async def main() -> object:
        heap.settle()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await work(stop)

    return asyncio.run(main())


def _relay(settings: Settings) -> int:
    if settings.database_url is None or settings.nats_url is None:
        print("ledger relay: set LEDGER_DATABASE_URL and LEDGER_NATS_URL", file=sys.stderr)
        return 2
    from ledger.relay import run_relay
    from ledger.tracing import traced

    database_url, nats_url = settings.database_url, settings.nats_url
    with traced(settings, "relay") as provider:
        _run_until_signal(
            lambda stop: run_relay(database_url, nats_url, stop=stop, tracer_provider=provider)
        )
    return 0


def _project(settings: Settings, names: list[str], rebuild_name: str | None) -> int:
    if settings.database_url is None:
        print("ledger project: set LEDGER_DATABASE_URL or --database-url", file=sys.stderr)
        return 2
    from projections.registry import UnknownProjectionError

    database_url = settings.database_url
    try:
        if rebuild_name is not None:
            from projections.rebuild import rebuild

            heap.settle()
            results = asyncio.run(rebuild(database_url, [rebuild_name]))
            for result in results:
                print(f"rebuilt {result.name}: {result.events} events up to {result.sequence}")
            return 0
        if settings.nats_url is None:
            print("ledger project: set LEDGER_NATS_URL or --nats-url", file=sys.stderr)
            return 2
        from ledger.tracing import traced
        from projections.worker import run_projections

        nats_url = settings.nats_url
        with traced(settings, "projections") as provider:
            parked = _run_until_signal(
                lambda stop: run_projections(
                    database_url, nats_url, names, stop=stop, tracer_provider=provider
                )
            )
    except UnknownProjectionError as error:
        print(f"ledger project: unknown read model {error}", file=sys.stderr)
        return 2
    if parked:
        print(f"ledger project: parked read models: {parked}", file=sys.stderr)
        return 1
    return 0


def _create_user(settings: Settings, email: str, role: str) -> int:
    if settings.database_url is None:
        print("ledger users create: set LEDGER_DATABASE_URL or --database-url", file=sys.stderr)
        return 2
    from api.passwords import HashCost
    from api.users_admin import create_user
    from ledger.domain.errors import DomainError

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline()
    try:
        user_id = asyncio.run(
            create_user(
                settings.database_url,
                email,
                password.rstrip("\n"),
                role,
                cost=HashCost.of(settings),
            )
        )
    except DomainError as error:
        print(f"ledger users create: {error.code}: {error}", file=sys.stderr)
        return 1
    print(user_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _audit_verify(settings: Settings, from_sequence: int) -> int:
    if settings.database_url is None:
        print("ledger audit verify: set LEDGER_DATABASE_URL or --database-url", file=sys.stderr)
        return 2
    if from_sequence < 1:
        print("ledger audit verify: --from-sequence starts at 1", file=sys.stderr)
        return 2
    return asyncio.run(_verify_all(settings.database_url, from_sequence))


async def _verify_all(database_url: str, from_sequence: int) -> int:
    import asyncpg

    from ledger import audit

    def sequences(last: int, head: int) -> None:
        print(f"  global chain: {last} of {head} sequences", file=sys.stderr)

    def events(count: int) -> None:
        print(f"  streams: {count} events", file=sys.stderr)

    connection = await asyncpg.connect(database_url)
    try:
        log = await audit.verify_log(connection, from_sequence=from_sequence, progress=sequences)
        if log.broken is not None:
            where = log.broken
            print(
                f"global chain: BROKEN at sequence {where.sequence} (position "
                f"{where.position}): {where.reason}"
            )
            return 1
        last = from_sequence + log.checked - 1
        print(
            f"global chain: sequences {from_sequence}..{last} ok, "
            f"global hash {log.global_hash.hex()}"
        )
        streams = await audit.verify_streams(connection, progress=events)
    finally:
        await connection.close()
    if streams.broken is not None:
        broken = streams.broken
        print(
            f"stream {streams.stream_id}: BROKEN at version {broken.version} (position "
            f"{broken.position}): {broken.reason}"
        )
        return 1
    print(f"streams: {streams.streams} streams, {streams.events} events ok")
    return 0
