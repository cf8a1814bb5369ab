"""The settlement service keys reused verifications by (payload hash, chain id): the payload hash does not
cover the network, so one payload verified for two chains is two entries that never stand in for each
other, nor use each other up."""

from __future__ import annotations

from typing import Any, cast

from facilitator.exact_evm.verifier import VerifiedPayment
from facilitator.settlement.recent import RecentVerifications


def test_one_payload_on_two_chains_is_two_entries() -> None:
    recent = RecentVerifications(5.0)
    recent.put(("ab" * 32, 8453), cast(VerifiedPayment, "on Base"))
    assert recent.take(("ab" * 32, 84532)) is None  # verified for another chain: settle verifies afresh
    recent.put(("ab" * 32, 84532), cast(VerifiedPayment, "on Base Sepolia"))
    assert cast(Any, recent.take(("ab" * 32, 8453))) == "on Base"
    assert cast(Any, recent.take(("ab" * 32, 84532))) == "on Base Sepolia"
