"""Settlement while the base fee cannot be read: no transaction is priced at zero (refused by the node on
every key, and the payment recorded failed for good). Before any read it is a 503 with nothing stored;
after one, the last base fee read still prices the transaction."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from shared.rpc.errors import RpcUnavailable
from shared.rpc.eth import Eth
from shared.x402 import reasons
from tests.support.payments import paid_request

pytestmark = pytest.mark.integration


@pytest.fixture
def fee_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Every node answers everything but the base fee while `down` is true."""
    state = {"down": True}
    real = Eth.fee_history

    async def fee_history(self: Eth) -> tuple[int, int]:
        if state["down"]:
            raise RpcUnavailable("base fee read refused (test outage)")
        return await real(self)

    monkeypatch.setattr(Eth, "fee_history", fee_history)
    return state


async def _ledger(dsn: str) -> tuple[list[dict[str, Any]], int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT status, error_reason FROM settlements")
        txs = await conn.fetchval("SELECT count(*) FROM settlement_transactions")
        return [dict(r) for r in rows], int(txs)
    finally:
        await conn.close()


async def test_a_settle_before_any_base_fee_read_is_503_then_settles_once_it_is_read(
    dev_chain, start_facilitator, fresh_database, fee_reads
):
    fac = await start_facilitator()  # the start-up read fails: the facilitator starts all the same
    assert (await fac.get("/health")).status_code == 200
    payer = dev_chain.new_payer(1_000_000)
    body = paid_request(dev_chain, payer, 6_000)
    pay_to = body["paymentRequirements"]["payTo"]

    refused = await fac.post("/settle", body)
    assert refused.status_code == 503, refused.text
    assert refused.json()["reason"] == reasons.NETWORK_UNAVAILABLE
    assert await _ledger(fresh_database) == ([], 0)
    assert dev_chain.balance_of(pay_to) == 0

    fee_reads["down"] = False
    answer = (await fac.post("/settle", body)).json()
    assert answer["success"] is True, answer
    assert await _ledger(fresh_database) == ([{"status": "confirmed", "error_reason": None}], 1)
    assert dev_chain.balance_of(pay_to) == 6_000


async def test_the_start_up_read_prices_settlements_through_a_later_outage(
    dev_chain, start_facilitator, fresh_database, fee_reads
):
    fee_reads["down"] = False
    fac = await start_facilitator()
    fees = fac.core.networks[dev_chain.chain_id].fees
    assert fees.base_fee > 0  # read at start-up, before any settlement asked
    fees.refresh_seconds = 0.0  # every quote asks the node again, and now it does not answer
    fee_reads["down"] = True
    body = paid_request(dev_chain, dev_chain.new_payer(1_000_000), 2_000)
    answer = (await fac.post("/settle", body)).json()
    assert answer["success"] is True, answer
    assert dev_chain.balance_of(body["paymentRequirements"]["payTo"]) == 2_000
