"""A lean asyncio HTTP/1.1 load generator: keep-alive connections, pre-serialised request bytes.

httpx costs ~100-200 us of CPU per request, which on a 2-core machine shared with the server, Anvil and
PostgreSQL would be a large part of what is measured. This client writes bytes prepared before timing,
reads the status line, the headers and a Content-Length (or chunked) body, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


class HttpError(Exception):
    pass


def build_request(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """The full bytes of one POST request (HTTP/1.1, keep-alive)."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build_get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


class Connection:
    """One keep-alive HTTP/1.1 connection; requests on it are sequential."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._writer = None
            self._reader = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        status, _, payload = await self.request_with_headers(data)
        return status, payload

    async def request_with_headers(self, data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Status, headers (lower-case names, bytes values) and body of one request."""
        if self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        self._writer.write(data)
        reader = self._reader
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {status_line!r}")
        status = int(parts[1])
        headers: dict[bytes, bytes] = {}
        for line in header_block.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"-1"))
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        close = b"close" in headers.get(b"connection", b"").lower()
        if chunked:
            body = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                body += await reader.readexactly(size + 2)
                del body[-2:]
            payload = bytes(body)
        elif length >= 0:
            payload = await reader.readexactly(length)
        else:
            payload = await reader.read()
            close = True
        if close:
            await self.close()
        return status, headers, payload


@dataclass
class CellResult:
    """What one (target, endpoint, concurrency) cell measured."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: int = 0  # transport errors (counted in failed too)
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failure_samples: list[str] = field(default_factory=list)
    ok_indices: list[int] = field(default_factory=list)  # which requests succeeded (for chain checks)
    bodies: dict[int, bytes] = field(default_factory=dict)  # kept only when asked (keep_bodies)
    pool_exhausted: bool = False

    @property
    def throughput(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        k = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
        return data[k]


async def run_cell(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    judge: Callable[[int, bytes], bool],
    duration: float | None = None,
    max_failure_samples: int = 5,
    keep_bodies: bool = False,
    connect_timeout: float = 30.0,
) -> CellResult:
    """Send `requests` (each at most once, in order) over `concurrency` keep-alive connections.

    With `duration`, workers stop taking new requests once it has passed (in-flight ones finish);
    otherwise every request is sent. `judge(status, body)` says whether an answer is a success.
    Connections are opened before the clock starts.
    """
    result = CellResult()
    conns = [Connection(host, port) for _ in range(concurrency)]
    # Open in waves so a listen backlog is never the thing being measured.
    for i in range(0, len(conns), 128):
        await asyncio.wait_for(asyncio.gather(*(c.open() for c in conns[i : i + 128])), connect_timeout)
    next_index = 0
    total = len(requests)
    started = time.perf_counter()
    deadline = started + duration if duration is not None else None
    last_done = started

    async def worker(conn: Connection) -> None:
        nonlocal next_index, last_done
        while True:
            if deadline is not None and time.perf_counter() >= deadline:
                return
            if next_index >= total:
                if deadline is not None:
                    result.pool_exhausted = True
                return
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                status, body = await conn.request(requests[i])
            except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
                t1 = time.perf_counter()
                result.sent += 1
                result.failed += 1
                result.errors += 1
                if len(result.failure_samples) < max_failure_samples:
                    result.failure_samples.append(f"#{i} transport error: {type(exc).__name__}: {exc}")
                await conn.close()
                last_done = max(last_done, t1)
                continue
            t1 = time.perf_counter()
            last_done = max(last_done, t1)
            result.sent += 1
            result.latencies.append(t1 - t0)
            if keep_bodies:
                result.bodies[i] = body
            if judge(status, body):
                result.ok += 1
                result.ok_indices.append(i)
            else:
                result.failed += 1
                if len(result.failure_samples) < max_failure_samples:
                    result.failure_samples.append(
                        f"#{i} HTTP {status}: {body[:600].decode(errors='replace')}"
                    )

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    result.elapsed = last_done - started
    return result


async def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:  # noqa: ASYNC109
    conn = Connection(host, port)
    try:
        return await asyncio.wait_for(conn.request(build_get(host, port, path)), timeout)
    finally:
        await conn.close()
