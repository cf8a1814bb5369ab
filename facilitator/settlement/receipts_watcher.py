"""One poller per network that fetches receipts for every awaited transaction in a single JSON-RPC batch,
so a thousand concurrent settlements cost one request per poll rather than a thousand."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import Eth

MAX_BATCH = 500


class ReceiptWatcher:
    def __init__(self, eth: Eth, *, poll_seconds: float = 0.05) -> None:
        self.eth = eth
        self.poll_seconds = poll_seconds
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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

    async def _run(self) -> None:
        while True:
            if not self._waiters:
                self._wake.clear()
                await self._wake.wait()
            await self._poll_once()
            await asyncio.sleep(self.poll_seconds)

    async def _poll_once(self) -> None:
        hashes = list(self._waiters)[:MAX_BATCH]
        if not hashes:
            return
        try:
            replies = await self.eth.rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        except (RpcUnavailable, RpcError):
            return  # next poll tries again; waiters have their own deadline
        for tx_hash, receipt in zip(hashes, replies, strict=True):
            if isinstance(receipt, dict):
                for fut in self._waiters.pop(tx_hash, []):
                    if not fut.done():
                        fut.set_result(receipt)
