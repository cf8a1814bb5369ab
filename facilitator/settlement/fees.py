"""EIP-1559 fee quotes from a cached base fee, refreshed in the background: asking the node on every
settlement would add a round trip to the hot path."""

from __future__ import annotations

import asyncio
import contextlib
import time

from shared.rpc.errors import RpcError, RpcUnavailable
from shared.rpc.eth import Eth

from .signers import FeeQuote


class FeeCapExceeded(Exception):
    pass


class FeeOracle:
    def __init__(
        self, eth: Eth, *, max_fee_cap: int, max_priority_fee: int, refresh_seconds: float = 2.0
    ) -> None:
        self.eth = eth
        self.max_fee_cap = max_fee_cap
        self.max_priority_fee = max_priority_fee
        self.refresh_seconds = refresh_seconds
        self._base_fee: int | None = None
        self._tip: int = 0
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        base, tip = await self.eth.fee_history()
        self._base_fee, self._tip, self._fetched_at = base, tip, time.monotonic()

    @property
    def base_fee(self) -> int:
        """The next block's base fee as of the last refresh (0 before any)."""
        return self._base_fee or 0

    async def quote(self) -> FeeQuote:
        if self._base_fee is None or time.monotonic() - self._fetched_at > self.refresh_seconds:
            async with self._lock:
                if self._base_fee is None or time.monotonic() - self._fetched_at > self.refresh_seconds:
                    with contextlib.suppress(RpcError, RpcUnavailable):
                        await self.refresh()
        base = self._base_fee or 0
        tip = min(self._tip, self.max_priority_fee)
        # Twice the base fee rides out six full blocks of base-fee growth before the tx stalls.
        max_fee = min(2 * base + tip, self.max_fee_cap)
        if max_fee < base:
            raise FeeCapExceeded(f"base fee {base} is above the configured cap {self.max_fee_cap}")
        return FeeQuote(max_fee_per_gas=max_fee, max_priority_fee_per_gas=min(tip, max_fee))
