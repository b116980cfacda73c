"""Waiting in tests for what another task or process does in its own time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, *, timeout_s: float, poll_s: float = 0.02
) -> None:
    """Return once `check()` is true; fail the test, naming `what`, after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(poll_s)
