"""Which settlements share a transaction, and what it sends (facilitator/settlement/batching.py)."""

from __future__ import annotations

from dataclasses import dataclass

from facilitator.settlement.batching import PER_CALL_GAS, plan_units, transaction_for
from facilitator.settlement.signers import FeeQuote
from shared.evm import calls

TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
QUOTE = FeeQuote(10**9, 10**6)


@dataclass(frozen=True)
class Sub:
    name: str
    to: str = TOKEN
    calldata: bytes = b"\xe3\xee\x16\x0e" + b"\x01" * 32
    gas: int = 90_000
    fees: FeeQuote = QUOTE
    token: str = TOKEN


def test_plain_transfers_share_batches_of_at_most_max_batch_and_deployments_go_alone() -> None:
    plain = [Sub(f"p{i}") for i in range(5)]
    deploy = Sub("d", to=calls.MULTICALL3_ADDRESS)
    group = [plain[0], deploy, *plain[1:]]
    units = plan_units(group, max_batch=2)
    assert [[s.name for s in u] for u in units] == [["p0", "p1"], ["p2", "p3"], ["p4"], ["d"]]
    # The token address may come in another case than the requirement's.
    assert len(plan_units([Sub("a", to=TOKEN.lower()), Sub("b")], max_batch=10)) == 1


def test_max_batch_one_sends_every_settlement_alone() -> None:
    assert [[s.name for s in u] for u in plan_units([Sub("a"), Sub("b")], max_batch=1)] == [["a"], ["b"]]


def test_a_lone_transfer_is_sent_as_itself() -> None:
    s = Sub("a")
    call = transaction_for([s])
    assert (call.to, call.data, call.gas, call.fees) == (s.to, s.calldata, s.gas, s.fees)


def test_a_batch_is_one_try_aggregate_that_lets_each_transfer_fail_alone() -> None:
    a = Sub("a", calldata=b"\xaa" * 40, gas=90_000, fees=FeeQuote(10**9, 3 * 10**6))
    b = Sub("b", calldata=b"\xbb" * 40, gas=110_000, fees=FeeQuote(2 * 10**9, 10**6))
    call = transaction_for([a, b])
    assert call.to == calls.MULTICALL3_ADDRESS
    assert call.data == calls.try_aggregate([(TOKEN, a.calldata), (TOKEN, b.calldata)], require_success=False)
    # One base cost for the transaction, each transfer's execution plus what the aggregation adds.
    assert call.gas == 21_000 + (90_000 - 21_000) + (110_000 - 21_000) + 2 * PER_CALL_GAS
    # The highest cap and tip of the members: none of them is sent cheaper than it was quoted.
    assert call.fees == FeeQuote(2 * 10**9, 3 * 10**6)
