"""Which settlements of a group share one transaction, and what that transaction is. Pure: the submitter
does the I/O.

Settlements that reach the send step together go out as one Multicall3 `tryAggregate(false, ...)` call:
one transaction, one signer nonce and one block slot for the whole group instead of one each. That saves
the 21,000 base gas of every transfer but the first on a real chain, and on a node that mines a block per
arriving transaction (Anvil's automine) it turns a block per settlement into a block per group.
`tryAggregate(false, ...)` lets each transfer fail alone: one payment spent meanwhile does not take the
others down; its own receipt check (no AuthorizationUsed log for its nonce) fails it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from shared.evm import calls

from .signers import FeeQuote

_BASE_GAS = 21_000
# What tryAggregate adds per call: decoding the call, a warm CALL, copying the calldata into memory and
# a result slot. ~5k measured; the rest is headroom, like the multiplier on each transfer's own limit.
PER_CALL_GAS = 8_000


class Batchable(Protocol):
    @property
    def to(self) -> str: ...
    @property
    def calldata(self) -> bytes: ...
    @property
    def gas(self) -> int: ...
    @property
    def fees(self) -> FeeQuote: ...
    @property
    def token(self) -> str: ...


S = TypeVar("S", bound=Batchable)


@dataclass(frozen=True, slots=True)
class Call:
    to: str
    data: bytes
    gas: int
    fees: FeeQuote


def plan_units(group: Sequence[S], *, max_batch: int) -> list[list[S]]:
    """Splits a group into transactions: plain transfers to the token in batches of at most `max_batch`;
    anything else (an ERC-6492 deployment already goes through Multicall3 with its own bundle) alone."""
    if max_batch <= 1:
        return [[s] for s in group]
    plain = [s for s in group if s.to.lower() == s.token.lower()]
    alone = [[s] for s in group if s.to.lower() != s.token.lower()]
    return [plain[i : i + max_batch] for i in range(0, len(plain), max_batch)] + alone


def transaction_for(unit: Sequence[Batchable], multicall: str = calls.MULTICALL3_ADDRESS) -> Call:
    """The one call a unit sends: the transfer itself when alone, a tryAggregate of all of them otherwise."""
    if len(unit) == 1:
        (s,) = unit
        return Call(s.to, s.calldata, s.gas, s.fees)
    data = calls.try_aggregate([(s.to, s.calldata) for s in unit], require_success=False)
    gas = _BASE_GAS + sum(s.gas - _BASE_GAS + PER_CALL_GAS for s in unit)
    fees = FeeQuote(
        max_fee_per_gas=max(s.fees.max_fee_per_gas for s in unit),
        max_priority_fee_per_gas=max(s.fees.max_priority_fee_per_gas for s in unit),
    )
    return Call(multicall, data, gas, fees)
