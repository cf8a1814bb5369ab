"""A facilitator SIGKILLed between broadcast and receipt loses nothing and charges nothing twice."""

import asyncio
import time
from typing import Any

import asyncpg
import httpx
import pytest

from shared.x402 import reasons
from tests.support.facilitator_process import FacilitatorProcess, settle
from tests.support.payments import paid_request

pytestmark = pytest.mark.integration


async def _wait_submitted(dsn: str) -> tuple[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(200):
            row = await conn.fetchrow("SELECT status, tx_hash FROM settlements")
            if row and row["status"] == "submitted":
                return row["status"], row["tx_hash"]
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError("settlement never reached 'submitted'")


async def _ledger(dsn: str) -> tuple[list[dict[str, Any]], int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT status, tx_hash FROM settlements")
        txs = await conn.fetchval("SELECT count(*) FROM settlement_transactions")
        return [dict(r) for r in rows], int(txs)
    finally:
        await conn.close()


@pytest.mark.parametrize("node_loses_the_transaction", [False, True], ids=["mined-while-down", "dropped"])
async def test_sigkill_after_broadcast_then_restart(dev_chain, fresh_database, node_loses_the_transaction):
    payer = dev_chain.new_payer(1_000_000)
    body = paid_request(dev_chain, payer, 12_345)
    pay_to = body["paymentRequirements"]["payTo"]
    fac = FacilitatorProcess(dev_chain, fresh_database)
    await fac.start()
    dev_chain.rpc.request("evm_setAutomine", [False])
    try:
        in_flight = asyncio.create_task(settle(fac.url, body))
        _, tx_hash = await _wait_submitted(fresh_database)
        assert dev_chain.rpc.request("eth_getTransactionByHash", [tx_hash]) is not None  # broadcast
        fac.kill()
        with pytest.raises(httpx.TransportError):
            await in_flight
        if node_loses_the_transaction:
            dev_chain.rpc.request("anvil_dropTransaction", [tx_hash])
            assert dev_chain.rpc.request("eth_getTransactionByHash", [tx_hash]) is None
        else:
            dev_chain.rpc.request("evm_mine", [])
    finally:
        dev_chain.rpc.request("evm_setAutomine", [True])

    await fac.start()  # the reconciler resolves the orphaned row: receipt found, or the same bytes re-sent
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows, _ = await _ledger(fresh_database)
            if rows[0]["status"] == "confirmed":
                break
            await asyncio.sleep(0.1)
        rows, tx_count = await _ledger(fresh_database)
        assert rows == [{"status": "confirmed", "tx_hash": tx_hash}]
        assert tx_count == 1

        again = await settle(fac.url, body)
        assert again["success"] is True, again
        assert again["transaction"] == tx_hash
        assert dev_chain.balance_of(pay_to) == 12_345
        assert dev_chain.balance_of(payer.address) == 1_000_000 - 12_345
        receipt = dev_chain.rpc.request("eth_getTransactionReceipt", [tx_hash])
        assert receipt["status"] == "0x1"
        async with httpx.AsyncClient() as http:
            doc = (await http.get(f"{fac.url}/receipt/{tx_hash}")).json()
        assert doc["receipt"]["status"] == "confirmed"
    finally:
        fac.stop()


async def test_a_transaction_under_the_base_fee_is_replaced_and_the_payment_settles_once(
    dev_chain_isolated, start_facilitator, fresh_database
):
    """A broadcast transaction whose fee cap falls under the base fee is stuck, and every later nonce of its
    key with it. The reconciler replaces it (same nonce, higher fees); exactly one of the two is mined."""
    chain = dev_chain_isolated
    fac = await start_facilitator(network={"receipt_timeout_seconds": 0.3}, reconcile_interval_seconds=3600)
    network = fac.core.settlement.networks[chain.chain_id]
    payer = chain.new_payer(1_000_000)
    body = paid_request(chain, payer, 4_000)
    pay_to = body["paymentRequirements"]["payTo"]
    chain.rpc.request("evm_setAutomine", [False])
    try:
        pending = (await fac.post("/settle", body)).json()
        assert pending["errorReason"] == reasons.SETTLEMENT_PENDING, pending
        first = pending["transaction"]
        (stored,) = await fac.core.settlement.ledger.transactions(
            (await fac.core.settlement.ledger.rows_by_tx_hash(first))[0].id
        )
        # The base fee jumps past the transaction's fee cap: the next block leaves it out.
        chain.rpc.request("anvil_setNextBlockBaseFeePerGas", [hex(stored.max_fee_per_gas * 4)])
        chain.rpc.request("evm_mine", [])
        assert chain.rpc.request("eth_getTransactionReceipt", [first]) is None

        await network.fees.refresh()
        assert await fac.core.reconciler.run_once() == 1
        row = (await fac.core.settlement.ledger.rows_by_tx_hash(first))[0]
        txs = await fac.core.settlement.ledger.transactions(row.id)
        assert [t.replacement for t in txs] == [0, 1]
        assert txs[1].signer_nonce == txs[0].signer_nonce and txs[1].signer == txs[0].signer
        assert txs[1].max_fee_per_gas > network.fees.base_fee
        assert row.tx_hash == txs[1].tx_hash
        chain.rpc.request("evm_mine", [])
    finally:
        chain.rpc.request("evm_setAutomine", [True])

    done = (await fac.post("/settle", body)).json()
    assert done["success"] is True, done
    assert done["transaction"] == txs[1].tx_hash
    assert chain.rpc.request("eth_getTransactionReceipt", [first]) is None
    assert chain.balance_of(pay_to) == 4_000
    old = (await fac.get(f"/receipt/{first}")).json()["receipt"]
    assert old["status"] == "replaced" and old["replacedBy"] == txs[1].tx_hash
