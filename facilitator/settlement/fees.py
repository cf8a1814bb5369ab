"""EIP-1559 fee quotes from a cached base fee, refreshed in the background: asking the node on every
settlement would add a round trip to the hot path."""

from __future__ import annotations

import asyncio
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
        self._attempts = 0  # refreshes quote() finished: callers queued behind one do not repeat it
        self._last_error: Exception | None = None

    async def refresh(self) -> None:
        """Reads the base fee now; raises what the node raised."""
        base, tip = await self.eth.fee_history()
        self._base_fee, self._tip, self._fetched_at = base, tip, time.monotonic()

    @property
    def base_fee(self) -> int:
        """The next block's base fee as of the last refresh (0 before any)."""
        return self._base_fee or 0

    def _stale(self) -> bool:
        return self._base_fee is None or time.monotonic() - self._fetched_at > self.refresh_seconds

    async def quote(self) -> FeeQuote:
        """Raises RpcUnavailable while no base fee was ever read: a fee cap of zero would be refused by the
        node on every key. A refresh that fails later quotes from the last base fee read (a transaction
        that falls behind the base fee is replaced by the reconciler)."""
        if self._stale():
            seen = self._attempts
            async with self._lock:
                # A refresh that failed while this caller waited is not tried again at once: callers queued
                # behind a dead node would each wait out its timeout in turn.
                if self._attempts == seen and self._stale():
                    try:
                        await self.refresh()
                    except (RpcError, RpcUnavailable) as exc:
                        self._last_error = exc
                    finally:
                        self._attempts += 1  # counted when done: callers queued meanwhile see it change
        if self._base_fee is None:
            raise RpcUnavailable(f"no base fee read yet: {self._last_error}")
        base = self._base_fee
        tip = min(self._tip, self.max_priority_fee)
        # Twice the base fee rides out six full blocks of base-fee growth before the tx stalls.
        max_fee = min(2 * base + tip, self.max_fee_cap)
        if max_fee < base:
            raise FeeCapExceeded(f"base fee {base} is above the configured cap {self.max_fee_cap}")
        return FeeQuote(max_fee_per_gas=max_fee, max_priority_fee_per_gas=min(tip, max_fee))
