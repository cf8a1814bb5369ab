"""facilitator/settlement/speedup.py: when a broadcast transaction counts as stuck, and what its replacement
pays (nodes refuse a replacement unless both fees rise by at least 10 %)."""

from __future__ import annotations

from facilitator.settlement.signers import FeeQuote
from facilitator.settlement.speedup import is_stuck, replacement_fees

GWEI = 10**9


def test_stuck_when_under_the_base_fee_or_too_old() -> None:
    assert is_stuck(age_seconds=1, replace_after_seconds=30, max_fee=2 * GWEI, next_base_fee=3 * GWEI)
    assert is_stuck(age_seconds=31, replace_after_seconds=30, max_fee=5 * GWEI, next_base_fee=1 * GWEI)
    assert not is_stuck(age_seconds=29, replace_after_seconds=30, max_fee=5 * GWEI, next_base_fee=5 * GWEI)


def test_replacement_raises_both_fees_by_at_least_ten_percent() -> None:
    old = FeeQuote(max_fee_per_gas=10 * GWEI, max_priority_fee_per_gas=GWEI)
    quiet_market = FeeQuote(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI // 2)
    new = replacement_fees(old, quiet_market, cap=100 * GWEI)
    assert new is not None
    assert new.max_fee_per_gas * 10 >= old.max_fee_per_gas * 11
    assert new.max_priority_fee_per_gas * 10 >= old.max_priority_fee_per_gas * 11


def test_replacement_follows_a_market_above_the_bump() -> None:
    old = FeeQuote(max_fee_per_gas=2 * GWEI, max_priority_fee_per_gas=GWEI)
    market = FeeQuote(max_fee_per_gas=40 * GWEI, max_priority_fee_per_gas=2 * GWEI)
    assert replacement_fees(old, market, cap=100 * GWEI) == market


def test_a_zero_tip_still_rises() -> None:
    old = FeeQuote(max_fee_per_gas=GWEI, max_priority_fee_per_gas=0)
    new = replacement_fees(old, FeeQuote(max_fee_per_gas=GWEI, max_priority_fee_per_gas=0), cap=100 * GWEI)
    assert new is not None and new.max_priority_fee_per_gas > 0


def test_no_replacement_beyond_the_cap() -> None:
    old = FeeQuote(max_fee_per_gas=95 * GWEI, max_priority_fee_per_gas=GWEI)
    market = FeeQuote(max_fee_per_gas=50 * GWEI, max_priority_fee_per_gas=GWEI)
    assert replacement_fees(old, market, cap=100 * GWEI) is None  # +12.5 % would be 106.9 gwei
