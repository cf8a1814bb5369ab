"""When a broadcast transaction is stuck and what its replacement pays. Pure: the reconciler does the I/O.

A transaction whose fee cap is under the next block's base fee cannot be included at all, and every later
nonce of its key waits behind it; one that is merely slow holds them up too. The fix is the same: the same
nonce, the same call, higher fees. Nodes accept a replacement only when both the fee cap and the tip rise by
at least 10 %, so each replacement raises both by 12.5 %, or to the market's quote if that is higher, and
never beyond the configured cap."""

from __future__ import annotations

from .signers import FeeQuote

_BUMP_NUM, _BUMP_DEN = 9, 8  # +12.5 %


def is_stuck(*, age_seconds: float, replace_after_seconds: float, max_fee: int, next_base_fee: int) -> bool:
    return next_base_fee > max_fee or age_seconds >= replace_after_seconds


def _raised(value: int) -> int:
    return max(-(-value * _BUMP_NUM // _BUMP_DEN), value + 1)


def replacement_fees(old: FeeQuote, market: FeeQuote, *, cap: int) -> FeeQuote | None:
    """The fees of a replacement for `old`, or None when the cap leaves no room to replace it."""
    max_fee = max(_raised(old.max_fee_per_gas), market.max_fee_per_gas)
    if max_fee > cap:
        return None
    tip = max(_raised(old.max_priority_fee_per_gas), market.max_priority_fee_per_gas)
    if tip > max_fee:
        return None  # a node would refuse a tip above the fee cap
    return FeeQuote(max_fee_per_gas=max_fee, max_priority_fee_per_gas=tip)
