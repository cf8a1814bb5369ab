"""Gas limits for settlement transactions: estimated with eth_estimateGas, then reused per (target, call,
wallet) for a while, and raised by what receipts show.

Why not estimate every transaction: on a node an estimate is a binary search, ~10x the cost of the
eth_call simulation that already proves the transfer succeeds. Transfers of one token through one call
differ only by storage warmth (a payee's first credit costs ~17k more), which the multiplier and the
receipts' gasUsed cover."""

from __future__ import annotations

import time
from decimal import Decimal

from shared.rpc.eth import Eth

from ..exact_evm.signature_check import SignatureKind
from ..exact_evm.verifier import VerifiedPayment

GasKey = tuple[str, bytes, str | None]


def gas_key(verified: VerifiedPayment) -> GasKey:
    # Contract wallets run their own isValidSignature: their gas is per wallet, not per token.
    wallet = None if verified.plan.kind is SignatureKind.EOA else verified.payer
    return verified.target, verified.calldata[:4], wallet


class GasOracle:
    def __init__(self, eth: Eth, *, multiplier: Decimal, ttl_seconds: float = 300.0) -> None:
        self.eth = eth
        self.multiplier = multiplier
        self.ttl_seconds = ttl_seconds
        self._known: dict[GasKey, tuple[int, float]] = {}

    async def limit_for(self, verified: VerifiedPayment, sender: str) -> int:
        if verified.gas_estimate is not None:
            self.observe(verified, verified.gas_estimate)
            return self._limit(verified.gas_estimate)
        key = gas_key(verified)
        known = self._known.get(key)
        if known is None or time.monotonic() - known[1] > self.ttl_seconds:
            estimate = await self.eth.estimate_gas(sender, verified.target, verified.calldata)
            self._known[key] = (max(estimate, known[0] if known else 0), time.monotonic())
        return self._limit(self._known[key][0])

    def observe(self, verified: VerifiedPayment, gas: int) -> None:
        """Receipts and fresh estimates only ever raise the figure until it expires."""
        key = gas_key(verified)
        known = self._known.get(key)
        if known is None or gas > known[0]:
            self._known[key] = (gas, known[1] if known else time.monotonic())

    def _limit(self, gas: int) -> int:
        return int(Decimal(gas) * self.multiplier)
