"""EmbeddedPostgres and EmbeddedNats: real servers in a tmp dir, stopped by pid, data kept.

These tests start their own servers whatever LEDGER_TEST_* says: what is under test is
the starting and stopping itself.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from ledger.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError

GONE_TIMEOUT_S = 30.0


def wait_gone(pids: list[int], timeout_s: float = GONE_TIMEOUT_S) -> list[int]:
    """The pids still alive after `timeout_s` (zombies count as gone)."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    process = psutil.Process(pid)
    return [pid, *(child.pid for child in process.children(recursive=True))]


async def test_postgres_serves_then_stops_with_every_process_it_started(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    with server:
        assert server.pid is not None
        assert server.url.startswith("postgresql://postgres@/postgres?host=")
        assert server.tcp_url.startswith("postgresql://postgres@127.0.0.1:")
        connection = await asyncpg.connect(server.url)
        over_tcp = await asyncpg.connect(server.tcp_url)
        try:
            assert await connection.fetchval("SHOW server_encoding") == "UTF8"
            # inet_server_addr(): null over a Unix socket, the address over TCP.
            assert await connection.fetchval("SELECT inet_server_addr()") is None
            assert str(await over_tcp.fetchval("SELECT inet_server_addr()")) == "127.0.0.1"
            pids = tree(server.pid)
        finally:
            await connection.close()
            await over_tcp.close()
    assert len(pids) > 1  # The postmaster and its background workers.
    assert wait_gone(pids) == []
    assert server.pid is None
    server.stop()  # A second stop is harmless.


async def test_postgres_restart_on_the_same_dir_keeps_the_data(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg") as first:
        connection = await asyncpg.connect(first.url)
        try:
            await connection.execute("CREATE TABLE kept (note text)")
            await connection.execute("INSERT INTO kept VALUES ('before restart')")
        finally:
            await connection.close()
    with EmbeddedPostgres(tmp_path / "pg") as second:
        connection = await asyncpg.connect(second.url)
        try:
            assert await connection.fetchval("SELECT note FROM kept") == "before restart"
        finally:
            await connection.close()


async def test_a_data_dir_too_deep_for_a_unix_socket_still_works_and_leaves_no_trace(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("deep" * 30) / "pg"
    socket_dirs_before = temporary_socket_dirs()
    with EmbeddedPostgres(deep) as server:
        connection = await asyncpg.connect(server.url)
        await connection.close()
    assert temporary_socket_dirs() <= socket_dirs_before


def temporary_socket_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("ledger-pg-*"))


def test_a_stale_pid_file_naming_a_live_unrelated_process_does_not_block_start(
    tmp_path: Path,
) -> None:
    with EmbeddedPostgres(tmp_path / "pg") as server:
        pid_file = server.pgdata / "postmaster.pid"
        stale_lines = pid_file.read_text().splitlines()
    # PostgreSQL itself refuses to start when the pid in the file is alive, as happens
    # when a container restarts and the number is reused by someone else.
    with subprocess.Popen(["sleep", "60"]) as stranger:
        try:
            pid_file.write_text("\n".join([str(stranger.pid), *stale_lines[1:]]) + "\n")
            with EmbeddedPostgres(tmp_path / "pg") as restarted:
                assert restarted.pid is not None
        finally:
            stranger.kill()


def test_a_port_in_use_fails_with_the_servers_log_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    with socket_listening() as port:
        server = EmbeddedPostgres(tmp_path / "pg", port=port)
        with pytest.raises(EmbeddedServerError, match="could not bind"):
            server.start()
    assert server.pid is None
    assert processes_using(tmp_path) == []


async def test_nats_jetstream_acks_a_publish_then_stops(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    with server:
        assert server.url.startswith("nats://127.0.0.1:")
        assert server.pid is not None
        pid = server.pid
        client = await nats.connect(server.url, connect_timeout=5)
        try:
            jetstream = client.jetstream()
            await jetstream.add_stream(name="EMBEDDED", subjects=["embedded.>"])
            ack = await jetstream.publish("embedded.test", b"hello", timeout=5)
            assert (ack.stream, ack.seq) == ("EMBEDDED", 1)
        finally:
            await client.close()
    assert wait_gone([pid]) == []


async def test_nats_restart_on_the_same_dir_keeps_the_stream(tmp_path: Path) -> None:
    for expected_messages in (1, 2):
        with EmbeddedNats(tmp_path / "nats") as server:
            client = await nats.connect(server.url, connect_timeout=5)
            try:
                jetstream = client.jetstream()
                if expected_messages == 1:
                    await jetstream.add_stream(name="KEPT", subjects=["kept.>"])
                await jetstream.publish("kept.note", b"x", timeout=5)
                info = await jetstream.stream_info("KEPT")
                assert info.state.messages == expected_messages
            finally:
                await client.close()


def test_servers_die_with_their_parent_even_on_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from ledger.embedded import EmbeddedNats, EmbeddedPostgres
        postgres = EmbeddedPostgres(Path({str(tmp_path / "pg")!r})); postgres.start()
        broker = EmbeddedNats(Path({str(tmp_path / "nats")!r})); broker.start()
        print(postgres.pid, broker.pid, flush=True)
        time.sleep(120)
        """
    )
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=root, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2, "the child script did not start its servers"
        servers = [member for pid in pids for member in tree(pid)]
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_gone(servers) == []
    finally:
        parent.kill()
        parent.wait(10)


@contextlib.contextmanager
def socket_listening() -> Iterator[int]:
    """A TCP port on 127.0.0.1 held open for the duration of a with block."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def processes_using(folder: Path) -> list[int]:
    """Pids of live processes whose command line mentions `folder`."""
    found: list[int] = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(folder) in argument for argument in cmdline) and _alive(process.pid):
            found.append(process.pid)
    return found
