"""The processes bench_projections measures apart: the relay, the projection workers, a
rebuild. Each is its own Python process, so its peak RSS (VmHWM) is its own.

    python -m benchmarks.projection_roles relay|worker DATABASE_URL NATS_URL STREAM
    python -m benchmarks.projection_roles rebuild DATABASE_URL PAGE

relay and worker run until SIGTERM; rebuild rebuilds every read model and exits. Each
prints, last, one JSON line: its role, its VmHWM in kB and, for a rebuild, the events
folded and the seconds the rebuild took (from the call to its return, swaps included).
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from ledger.relay import Relay, RelayOptions
from projections.rebuild import rebuild
from projections.worker import WorkerOptions, run_projections

FETCH_TIMEOUT_S = 0.05


def memory_kb(pid: int | str = "self", field: str = "VmHWM") -> int:
    """A VmHWM (peak) or VmRSS (now) line of /proc/<pid>/status, in kB (0 once gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def until_terminated(work: Any, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await work


async def run(role: str, arguments: list[str]) -> dict[str, Any]:
    stop = asyncio.Event()
    if role == "relay":
        url, nats_url, stream = arguments
        options = RelayOptions(stream_name=stream, subject_prefix=stream)
        await until_terminated(Relay(url, nats_url, options).run(stop), stop)
        return {"role": role}
    if role == "worker":
        url, nats_url, stream = arguments
        # Fetches of at most 50 ms: with nats-py's default of 1 s, lag at 200 commands/s
        # measured p50 620-950 ms against 490-600 ms (the pull stays open to fill its batch).
        worker_options = WorkerOptions(
            stream_name=stream, subject_prefix=stream, fetch_timeout_s=FETCH_TIMEOUT_S
        )
        work = run_projections(
            url, nats_url, ["all"], stream_name=stream, stop=stop, options=worker_options
        )
        await until_terminated(work, stop)
        return {"role": role}
    assert role == "rebuild", role
    url, page = arguments
    started = time.perf_counter()
    results = await rebuild(url, ["all"], batch=int(page), out=io.StringIO())
    return {
        "role": role,
        "events": results[0].events,
        "sequence": results[0].sequence,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    role, *arguments = sys.argv[1:]
    result = uvloop.run(run(role, arguments))
    result["vmhwm_kb"] = memory_kb()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
