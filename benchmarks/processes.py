"""The ledger's own processes for a benchmark run (`ledger serve`, `relay`, `project`),
started as in production and stopped by pid whatever happens.

Each process gets the environment it is given (no LEDGER_* or OTEL_* of the machine), its
output in a log file of the run, a session of its own (a Ctrl-C in the terminal reaches
only the benchmark, which stops them in order) and, on Linux, SIGTERM from the kernel
should the benchmark die without stopping them. `stop_all` signals each process by its
pid, newest first, waits, kills what lingers, and then kills by pid any process that one
of them had started and that is still alive (a `ledger serve --workers` worker, say).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NamedTuple

from ledger.embedded import _die_with_parent

STOP_TIMEOUT_S: Final = 30.0
KILL_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.05
LOG_TAIL_LINES: Final = 30


class Started(NamedTuple):
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


def ledger_command() -> list[str]:
    """The `ledger` console script of this venv; the module itself if not installed."""
    script = Path(sys.executable).parent / "ledger"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]


def clean_environment(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without LEDGER_* and OTEL_* variables, plus `settings`."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LEDGER_", "OTEL_", "PROMETHEUS_"))
    }
    return kept | dict(settings)


class Processes:
    """The processes of one run, in the order started."""

    def __init__(self, folder: Path, environment: Mapping[str, str]) -> None:
        self.folder = folder
        self.environment = dict(environment)
        self.started: list[Started] = []

    def start(self, name: str, *arguments: str, stdin: bytes | None = None) -> Started:
        log_path = self.folder / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*ledger_command(), *arguments],
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                start_new_session=True,
                preexec_fn=_die_with_parent(signal.SIGTERM),
            )
        started = Started(name, process, log_path)
        self.started.append(started)
        if stdin is not None:
            assert process.stdin is not None
            process.stdin.write(stdin)
            process.stdin.close()
        return started

    def run(self, name: str, *arguments: str, stdin: bytes, timeout_s: float) -> str:
        """Run a short command to its end; its output. Raises if it fails."""
        started = self.start(name, *arguments, stdin=stdin)
        try:
            code = started.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"ledger {name} took over {timeout_s:.0f} s") from None
        self.started.remove(started)
        output = started.log_path.read_text(errors="replace")
        if code != 0:
            raise RuntimeError(f"ledger {name} failed ({code}):\n{output}")
        return output

    def check_running(self) -> None:
        """Raise, with its log, if a long-running process has exited."""
        for item in self.started:
            code = item.process.poll()
            if code is not None:
                raise RuntimeError(f"ledger {item.name} exited ({code}):\n{tail(item.log_path)}")

    def pause(self, *names: str) -> None:
        """Stop the named processes where they are (SIGSTOP) until `resume`."""
        self._signal(names, signal.SIGSTOP)

    def resume(self, *names: str) -> None:
        self._signal(names, signal.SIGCONT)

    def _signal(self, names: tuple[str, ...], number: signal.Signals) -> None:
        for item in self.started:
            if item.name in names and item.process.poll() is None:
                item.process.send_signal(number)

    def stop_all(self) -> list[int]:
        """Stop every process, newest first; the pids that had to be killed after their
        parent was gone (none when everything stops as it should). A paused process is
        resumed first, so that it can handle its SIGTERM."""
        leftovers: list[int] = []
        for item in reversed(self.started):
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGCONT)
                children = descendants(item.process.pid)
                _stop(item.process)
                leftovers += _kill_survivors(children)
        return leftovers


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(KILL_TIMEOUT_S)


def _kill_survivors(pids: list[int]) -> list[int]:
    """Give `pids` a moment to exit after their parent, then SIGKILL those still there."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(POLL_S)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


def descendants(pid: int) -> list[int]:
    """The pids of every process below `pid` (Linux /proc; none elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
