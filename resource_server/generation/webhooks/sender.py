"""One signed delivery attempt over HTTP, reading at most a bounded part of the receiver's reply."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import orjson

from .guarded_transport import refusal_of
from .signing import EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, sign

USER_AGENT = "x402-generation-webhooks/1"


@dataclass(frozen=True, slots=True)
class SendResult:
    delivered: bool
    status: int | None
    error: str | None
    refused: bool = False  # the destination is forbidden: retrying cannot help


def body_of(payload: dict[str, Any]) -> bytes:
    # Sorted keys: the stored JSONB does not keep key order, and every attempt should send the same bytes.
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


async def send(
    client: httpx.AsyncClient,
    *,
    url: str,
    secret: str,
    event_id: UUID,
    event_type: str,
    body: bytes,
    max_response_bytes: int,
    deadline_seconds: float,
    clock: Callable[[], float] = time.time,
) -> SendResult:
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, body, int(clock())),
        EVENT_ID_HEADER: str(event_id),
        EVENT_TYPE_HEADER: event_type,
    }
    try:
        # httpx timeouts bound each read; the deadline bounds a receiver that drips bytes slowly forever.
        async with (
            asyncio.timeout(deadline_seconds),
            client.stream("POST", url, content=body, headers=headers) as resp,
        ):
            excerpt = await _read_bounded(resp, max_response_bytes)
    except TimeoutError:
        return SendResult(False, None, f"no answer within {deadline_seconds:g}s")
    except httpx.HTTPError as exc:
        refused = refusal_of(exc)
        if refused is not None:
            return SendResult(False, None, f"destination refused: {refused}", refused=True)
        return SendResult(False, None, f"{type(exc).__name__}: {exc}")
    if 200 <= resp.status_code < 300:
        return SendResult(True, resp.status_code, None)
    text = excerpt[:200].decode("utf-8", "replace")
    return SendResult(False, resp.status_code, f"HTTP {resp.status_code}: {text}")


async def _read_bounded(resp: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` raw (undecoded) bytes: decoding first would let a small gzip bomb expand."""
    kept = bytearray()
    async for chunk in resp.aiter_raw():
        kept += chunk[: limit - len(kept)]
        if len(kept) >= limit:
            break
    return bytes(kept)
