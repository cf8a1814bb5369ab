"""One poller per network that fetches receipts for every awaited transaction in batched requests, so a
thousand concurrent settlements cost a few requests per block rather than a thousand per poll.

A newly awaited hash is looked up at once and, while it is missing, again after 2, 4, 8, 16 and 32 ms: a
node can answer eth_sendRawTransaction a moment before the receipt of an instantly mined block is
readable. Everything still pending is looked up again only when the chain head moves, since a receipt can
only appear in a new block; `full_poll_seconds` is a fallback for nodes whose head lags."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import Eth, to_int

MAX_BATCH = 500
FAST_RETRIES = 5
FAST_RETRY_BASE_SECONDS = 0.002


class ReceiptWatcher:
    def __init__(self, eth: Eth, *, poll_seconds: float = 0.05, full_poll_seconds: float = 2.0) -> None:
        self.eth = eth
        self.poll_seconds = poll_seconds
        self.full_poll_seconds = full_poll_seconds
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._fresh: dict[str, int] = {}  # hash -> fast lookups so far
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._head: int | None = None
        self._last_full = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="receipt-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self, tx_hash: str, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        """The receipt, or None if it did not arrive within `timeout` seconds."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_hash, []).append(fut)
        self._fresh[tx_hash] = 0
        self._wake.set()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(tx_hash)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
                if not waiters:
                    self._waiters.pop(tx_hash, None)
                    self._fresh.pop(tx_hash, None)

    async def _run(self) -> None:
        while True:
            if not self._waiters:
                await self._wake.wait()
            self._wake.clear()
            # On an RPC failure the next round tries again; waiters have their own deadlines.
            with contextlib.suppress(RpcUnavailable, RpcError):
                await self._poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_delay())

    def _next_delay(self) -> float:
        if not self._fresh:
            return self.poll_seconds
        backoff: float = FAST_RETRY_BASE_SECONDS * 2.0 ** min(self._fresh.values())
        return min(self.poll_seconds, backoff)

    async def _poll_once(self) -> None:
        attempts = {h: n for h, n in self._fresh.items() if h in self._waiters}
        fresh = list(attempts)
        self._fresh = {}
        # One request: the head and the fresh hashes (the RPC client coalesces concurrent calls).
        head_reply, fresh_replies = await asyncio.gather(
            self.eth.rpc.call("eth_blockNumber"), self._lookup(fresh[:MAX_BATCH])
        )
        self._deliver(fresh[:MAX_BATCH], fresh_replies)
        for tx_hash in fresh:
            if tx_hash in self._waiters and attempts[tx_hash] + 1 < FAST_RETRIES:
                self._fresh[tx_hash] = attempts[tx_hash] + 1
        head, now = to_int(head_reply), time.monotonic()
        if head == self._head and now - self._last_full < self.full_poll_seconds and len(fresh) <= MAX_BATCH:
            return
        self._head, self._last_full = head, now
        pending = list(self._waiters)
        for start in range(0, len(pending), MAX_BATCH):
            chunk = pending[start : start + MAX_BATCH]
            self._deliver(chunk, await self._lookup(chunk))

    async def _lookup(self, hashes: list[str]) -> list[Any]:
        return await self.eth.rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes])

    def _deliver(self, hashes: list[str], replies: list[Any]) -> None:
        for tx_hash, receipt in zip(hashes, replies, strict=True):
            if isinstance(receipt, dict):
                for fut in self._waiters.pop(tx_hash, []):
                    if not fut.done():
                        fut.set_result(receipt)
