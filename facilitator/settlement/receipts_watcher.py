"""One poller per network that fetches receipts for every awaited transaction in batched requests, so a
thousand concurrent settlements cost a few requests per block rather than a thousand per poll.

A newly awaited hash is looked up at once: with automine (and on fast chains) its receipt usually exists
already. Everything still pending is looked up again only when the chain head moves, since a receipt can
only appear in a new block; `full_poll_seconds` is a fallback for nodes whose head lags."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import Eth, to_int

MAX_BATCH = 500


class ReceiptWatcher:
    def __init__(self, eth: Eth, *, poll_seconds: float = 0.05, full_poll_seconds: float = 2.0) -> None:
        self.eth = eth
        self.poll_seconds = poll_seconds
        self.full_poll_seconds = full_poll_seconds
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._fresh: set[str] = set()
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
        self._fresh.add(tx_hash)
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
                    self._fresh.discard(tx_hash)

    async def _run(self) -> None:
        while True:
            if not self._waiters:
                await self._wake.wait()
            self._wake.clear()
            # On an RPC failure the next round tries again; waiters have their own deadlines.
            with contextlib.suppress(RpcUnavailable, RpcError):
                await self._poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _poll_once(self) -> None:
        fresh = [h for h in self._fresh if h in self._waiters]
        self._fresh = set()
        # One request: the head and the fresh hashes (the RPC client coalesces concurrent calls).
        head_reply, fresh_replies = await asyncio.gather(
            self.eth.rpc.call("eth_blockNumber"), self._lookup(fresh[:MAX_BATCH])
        )
        self._deliver(fresh[:MAX_BATCH], fresh_replies)
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
