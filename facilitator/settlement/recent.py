"""Verifications a settle of the identical payload may reuse for a moment.

A resource server calls /verify and then /settle for one payment a few milliseconds apart; verifying again
at settle would repeat the signature check and the `eth_call` simulation (CPU here, and a billed call at a
hosted RPC provider). Within `ttl_seconds` the chain has had at most a block to change the outcome, and the
worst that can follow is a reverted transaction, never a second transfer: the EIP-3009 nonce is spent once.
Past that the settle verifies afresh, as does every settle on another replica.

Entries are keyed by whatever names one payload on one chain; the settlement service uses (payload hash,
chain id), since the payload hash does not cover the network."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable

from ..exact_evm.verifier import VerifiedPayment


class RecentVerifications:
    def __init__(self, ttl_seconds: float, *, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[VerifiedPayment, float]] = OrderedDict()

    def put(self, key: Hashable, verified: VerifiedPayment) -> None:
        if self.ttl_seconds <= 0:
            return
        self._entries[key] = (verified, time.monotonic())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def take(self, key: Hashable) -> VerifiedPayment | None:
        """The verification of this payload if it is fresh; either way it is used up."""
        entry = self._entries.pop(key, None)
        if entry is None or time.monotonic() - entry[1] > self.ttl_seconds:
            return None
        return entry[0]
