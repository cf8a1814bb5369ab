"""Resending a paid request after a network failure. Safe only because the request is byte-for-byte the
same each time: the payment header carries one EIP-3009 nonce, which the token lets move money once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from .errors import ServerUnreachable

Sleep = Callable[[float], Awaitable[None]]

# Failures where the request may not have reached the server, or its answer did not reach us.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # sends in all, the first included
    backoff_seconds: float = 0.25
    max_backoff_seconds: float = 4.0
    # What a proxy or a restarting server answers; 501 and friends will not get better by asking again.
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({500, 502, 503, 504}))

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def delay(self, retry: int, retry_after: str | None = None) -> float:
        """Seconds before retry number `retry` (1-based): doubling, or the server's Retry-After, capped."""
        wait = self.backoff_seconds * 2.0 ** (retry - 1)
        if retry_after is not None and retry_after.strip().isdigit():
            wait = float(retry_after.strip())
        return min(wait, self.max_backoff_seconds)


async def send_with_retry(
    http: httpx.AsyncClient,
    build: Callable[[], httpx.Request],
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    sleep: Sleep | None = None,
) -> tuple[httpx.Response, int]:
    """The last response and the number of sends. A retryable status that persists is returned as is;
    a transport failure that persists raises ServerUnreachable. No retry is started that could not land
    before `deadline` (unix time), when the payment would be refused as expired anyway."""
    attempt = 0
    while True:
        attempt += 1
        response: httpx.Response | None = None
        try:
            response = await http.send(build())
            if response.status_code not in policy.retry_statuses:
                return response, attempt
            failure = f"HTTP {response.status_code}"
        except RETRYABLE_ERRORS as exc:
            failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        wait = policy.delay(attempt, response.headers.get("retry-after") if response is not None else None)
        out_of_time = deadline is not None and time.time() + wait >= deadline
        if attempt >= policy.attempts or out_of_time:
            if response is not None:
                return response, attempt
            raise ServerUnreachable(f"{failure} (after {attempt} attempt(s))", attempts=attempt)
        await (sleep or asyncio.sleep)(wait)
