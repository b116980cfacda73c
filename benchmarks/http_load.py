"""A small HTTP/1.1 load generator on asyncio streams: keep-alive connections, requests
encoded once, the latency of each request from its first byte sent to its last byte read.

It speaks only what the benchmark needs of HTTP/1.1: requests with a Content-Length,
responses with a Content-Length or chunked. It costs the machine little CPU (about 0.2 ms
per request on the project's 2-core machine, a tenth of what the API spends on it), so the
server, not the client, sets the pace on a machine that runs both; `wrk` would cost less
still but is not installed everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import msgspec

REQUEST_TIMEOUT_S: Final = 30.0
HEAD_BYTES_MAX: Final = 64 * 1024
BODY_BYTES_MAX: Final = 16 * 1024 * 1024
_CONTENT_LENGTH: Final = b"\r\ncontent-length:"
_CHUNKED: Final = b"\r\ntransfer-encoding: chunked"


class HttpError(RuntimeError):
    """Raised when a response is not what the caller expected, or not HTTP at all."""


class Response(NamedTuple):
    status: int
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


def encode_request(
    method: str,
    path: str,
    *,
    host: str,
    token: str | None = None,
    body: Any = None,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """One request's bytes, ready to be sent any number of times."""
    payload = b"" if body is None else msgspec.json.encode(body)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(payload)}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=HEAD_BYTES_MAX), REQUEST_TIMEOUT_S
        )
        # Requests are written whole; no delay waiting for more bytes to coalesce.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> Response:
        """Send one encoded request and read its whole response."""
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            self._writer.write(request)
            head = await self._reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 "):
                raise HttpError(f"not an HTTP/1.1 response: {head[:40]!r}")
            status = int(head[9:12])
            lowered = head.lower()
            at = lowered.find(_CONTENT_LENGTH)
            if at >= 0:
                end = lowered.index(b"\r\n", at + 2)
                length = int(head[at + len(_CONTENT_LENGTH) : end])
                if not 0 <= length <= BODY_BYTES_MAX:
                    raise HttpError(f"a body of {length} bytes")
                return Response(status, await self._reader.readexactly(length))
            if lowered.find(_CHUNKED) >= 0:
                return Response(status, await self._chunked())
            return Response(status, b"")

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        size_total = 0
        while True:
            line = await self._reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0], 16)
            size_total += size
            if size_total > BODY_BYTES_MAX:
                raise HttpError(f"a chunked body over {BODY_BYTES_MAX} bytes")
            if size == 0:
                await self._reader.readuntil(b"\r\n")  # No trailers are sent to us.
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    async def close(self) -> None:
        self._writer.close()
        # The server may have closed it first; nothing is left to flush.
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), REQUEST_TIMEOUT_S)


async def open_connections(host: str, port: int, count: int) -> list[Connection]:
    return list(await asyncio.gather(*(Connection.open(host, port) for _ in range(count))))


async def close_connections(connections: Sequence[Connection]) -> None:
    await asyncio.gather(*(connection.close() for connection in connections))


class LoadRound(NamedTuple):
    """What one timed round of load did."""

    completed: int
    failures: list[Response]
    elapsed_s: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed_s


async def drive(
    connections: Sequence[Connection],
    requests: Sequence[bytes],
    seconds: float,
    accepted: Callable[[Response], bool],
) -> LoadRound:
    """Each connection sends its request again and again, one at a time, until `seconds`
    have passed; a response that `accepted` refuses counts as a failure, not a completion.
    The round lasts until the last response is in."""
    assert len(connections) == len(requests)
    latencies: list[float] = []
    failures: list[Response] = []
    clock = time.perf_counter
    deadline = clock() + seconds

    async def client(connection: Connection, request: bytes) -> None:
        while clock() < deadline:
            sent = clock()
            response = await connection.exchange(request)
            latencies.append((clock() - sent) * 1000)
            if not accepted(response):
                failures.append(response)

    started = clock()
    await asyncio.gather(*(client(c, r) for c, r in zip(connections, requests, strict=True)))
    elapsed = clock() - started
    return LoadRound(len(latencies) - len(failures), failures, elapsed, latencies)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    assert values, "no values"
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
