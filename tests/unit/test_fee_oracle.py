"""The fee oracle (settlement/fees.py) never prices a transaction from a base fee it has not read: before
the first successful read a quote is unavailability (HTTP 503, nothing stored), not a fee cap of zero."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from facilitator.settlement.fees import FeeCapExceeded, FeeOracle
from facilitator.settlement.signers import FeeQuote
from shared.rpc.errors import RpcError, RpcUnavailable

GWEI = 10**9


class FakeEth:
    """`fee_history` answers from `answers`, in order: a (base fee, tip) pair, or an exception to raise."""

    def __init__(self, *answers: tuple[int, int] | Exception, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.delay = delay

    async def fee_history(self) -> tuple[int, int]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def oracle(eth: FakeEth, **kwargs: Any) -> FeeOracle:
    settings: dict[str, Any] = dict(max_fee_cap=100 * GWEI, max_priority_fee=2 * GWEI, refresh_seconds=60.0)
    return FeeOracle(eth, **{**settings, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "failure", [RpcUnavailable("connection refused"), RpcError(-32603, "header not found")]
)
async def test_no_quote_before_a_base_fee_was_read(failure: Exception) -> None:
    fees = oracle(FakeEth(failure))
    with pytest.raises(RpcUnavailable, match="no base fee read yet"):
        await fees.quote()
    assert fees.base_fee == 0


async def test_a_later_quote_reads_the_base_fee_once_the_node_answers() -> None:
    eth = FakeEth(RpcUnavailable("down"), (3 * GWEI, GWEI))
    fees = oracle(eth)
    with pytest.raises(RpcUnavailable):
        await fees.quote()
    assert await fees.quote() == FeeQuote(max_fee_per_gas=7 * GWEI, max_priority_fee_per_gas=GWEI)
    assert (eth.calls, fees.base_fee) == (2, 3 * GWEI)


async def test_a_failed_refresh_quotes_from_the_last_base_fee_read() -> None:
    eth = FakeEth((3 * GWEI, GWEI), RpcUnavailable("down"))
    fees = oracle(eth, refresh_seconds=0.0)
    first = await fees.quote()
    await asyncio.sleep(0.001)  # stale: the next quote asks again, and the node does not answer
    assert await fees.quote() == first
    assert eth.calls == 2


async def test_a_start_up_refresh_prices_the_first_quote_without_asking_again() -> None:
    eth = FakeEth((3 * GWEI, GWEI), RpcUnavailable("down"))
    fees = oracle(eth)
    await fees.refresh()
    assert (await fees.quote()).max_fee_per_gas == 7 * GWEI
    assert eth.calls == 1


async def test_refresh_itself_raises_what_the_node_raised() -> None:
    fees = oracle(FakeEth(RpcError(-32000, "boom")))
    with pytest.raises(RpcError):
        await fees.refresh()


async def test_callers_queued_behind_a_failed_read_do_not_each_ask_again() -> None:
    eth = FakeEth(RpcUnavailable("down"), delay=0.01)
    fees = oracle(eth)
    answers = await asyncio.gather(*(fees.quote() for _ in range(10)), return_exceptions=True)
    assert all(isinstance(a, RpcUnavailable) for a in answers)
    assert eth.calls == 1


async def test_a_base_fee_above_the_cap_is_still_refused() -> None:
    fees = oracle(FakeEth((200 * GWEI, GWEI)))
    with pytest.raises(FeeCapExceeded):
        await fees.quote()
