"""A one-line progress bar on stderr: done / total, events per second, ETA."""

from __future__ import annotations

import sys
import time
from typing import Final, TextIO

BAR_WIDTH: Final = 24
REFRESH_S: Final = 0.25


class Progress:
    """Redraws at most every REFRESH_S; `finish()` draws the last state and ends the line."""

    def __init__(self, label: str, total: int, out: TextIO | None = None) -> None:
        assert total >= 0, total
        self.label = label
        self.total = total
        self.out = sys.stderr if out is None else out
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    @property
    def rate_per_s(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate_per_s
        shown = max(self.total, self.done)
        fraction = self.done / shown if shown else 1.0
        filled = int(fraction * BAR_WIDTH)
        left = max(shown - self.done, 0)
        eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return f"{self.label} [{bar}] {self.done:,}/{shown:,} events {rate:,.0f} events/s ETA {eta}"

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._drawn >= REFRESH_S:
            self._drawn = now
            self.out.write("\r" + self.line())
            self.out.flush()

    def finish(self) -> None:
        self.out.write("\r" + self.line() + "\n")
        self.out.flush()
