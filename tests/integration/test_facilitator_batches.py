"""Batched settlement (several transfers in one Multicall3 transaction) through crashes, lost transactions,
fee bumps and refusals: every payment ends confirmed exactly once, or failed with nothing charged."""

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest

from shared.x402 import reasons
from tests.integration.test_facilitator_crash import FacilitatorProcess, _settle
from tests.support.payments import paid_request

pytestmark = pytest.mark.integration


async def _rows(dsn: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [
            dict(r)
            for r in await conn.fetch("SELECT id, status, tx_hash, auth_nonce FROM settlements ORDER BY id")
        ]
    finally:
        await conn.close()


async def _wait_batched(dsn: str, count: int) -> list[dict[str, Any]]:
    """Waits until `count` settlements are submitted and at least two share a transaction."""
    for _ in range(200):
        rows = await _rows(dsn)
        hashes = [r["tx_hash"] for r in rows if r["status"] == "submitted"]
        if len(hashes) == count and len(set(hashes)) < count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {count} submitted settlements sharing a transaction: {await _rows(dsn)}")


@pytest.mark.parametrize("node_loses_the_batch", [False, True], ids=["mined-while-down", "dropped"])
async def test_sigkill_with_a_batch_in_flight_then_restart(dev_chain, fresh_database, node_loses_the_batch):
    payers = [dev_chain.new_payer(1_000_000) for _ in range(6)]
    bodies = [paid_request(dev_chain, p, 3_000 + i) for i, p in enumerate(payers)]
    fac = FacilitatorProcess(dev_chain, fresh_database)
    await fac.start()
    dev_chain.rpc.request("evm_setAutomine", [False])
    try:
        first = asyncio.create_task(_settle(fac.url, bodies[0]))
        await asyncio.sleep(0.3)  # a lone settlement goes at once; the rest arrive while it waits
        rest = [asyncio.create_task(_settle(fac.url, b)) for b in bodies[1:]]
        before = await _wait_batched(fresh_database, len(bodies))
        fac.kill()
        for task in [first, *rest]:
            with pytest.raises(httpx.TransportError):
                await task
        if node_loses_the_batch:
            for tx_hash in {r["tx_hash"] for r in before}:
                dev_chain.rpc.request("anvil_dropTransaction", [tx_hash])
        else:
            dev_chain.rpc.request("evm_mine", [])
    finally:
        dev_chain.rpc.request("evm_setAutomine", [True])

    await fac.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(r["status"] == "confirmed" for r in await _rows(fresh_database)):
                break
            await asyncio.sleep(0.1)
        after = await _rows(fresh_database)
        assert [r["status"] for r in after] == ["confirmed"] * len(bodies)
        # The stored bytes were re-sent (same nonce, same hash), not new transactions.
        assert [r["tx_hash"] for r in after] == [r["tx_hash"] for r in before]
        # Rows are in the order the settlements arrived, which concurrent requests do not fix.
        by_nonce = {r["auth_nonce"]: r for r in after}
        for body, payer in zip(bodies, payers, strict=True):
            row = by_nonce[body["paymentPayload"]["payload"]["authorization"]["nonce"]]
            amount = int(body["paymentRequirements"]["amount"])
            assert dev_chain.balance_of(body["paymentRequirements"]["payTo"]) == amount
            assert dev_chain.balance_of(payer.address) == 1_000_000 - amount
            again = await _settle(fac.url, body)
            assert again["success"] is True and again["transaction"] == row["tx_hash"], again
    finally:
        fac.stop()


async def test_a_stuck_batch_is_replaced_as_a_whole(dev_chain_isolated, start_facilitator, fresh_database):
    chain = dev_chain_isolated
    fac = await start_facilitator(network={"receipt_timeout_seconds": 1.0}, reconcile_interval_seconds=3600)
    network = fac.core.settlement.networks[chain.chain_id]
    ledger = fac.core.settlement.ledger
    payers = [chain.new_payer(1_000_000) for _ in range(5)]
    bodies = [paid_request(chain, p, 5_000 + i) for i, p in enumerate(payers)]
    chain.rpc.request("evm_setAutomine", [False])
    try:
        lone = asyncio.create_task(fac.post("/settle", bodies[0]))
        await asyncio.sleep(0.2)
        answers = [
            r.json() for r in await asyncio.gather(lone, *(fac.post("/settle", b) for b in bodies[1:]))
        ]
        assert {a["errorReason"] for a in answers} == {reasons.SETTLEMENT_PENDING}, answers
        # The transaction most answers name: groups may split however the requests arrived.
        batch = Counter(a["transaction"] for a in answers).most_common(1)[0][0]
        members = await ledger.rows_by_tx_hash(batch)
        assert len(members) >= 2
        (stored,) = await ledger.transactions(members[0].id)
        assert stored.settlement_ids == tuple(m.id for m in members)
        # The base fee jumps past every fee cap: the next block leaves the transactions out.
        chain.rpc.request("anvil_setNextBlockBaseFeePerGas", [hex(stored.max_fee_per_gas * 4)])
        chain.rpc.request("evm_mine", [])
        assert chain.rpc.request("eth_getTransactionReceipt", [batch]) is None

        await network.fees.refresh()
        await fac.core.reconciler.run_once()
        (replaced, bumped) = await ledger.transactions(members[0].id)
        assert replaced.tx_hash == batch and bumped.replacement == 1
        assert bumped.signer_nonce == stored.signer_nonce and bumped.settlement_ids == stored.settlement_ids
        chain.rpc.request("evm_mine", [])
    finally:
        chain.rpc.request("evm_setAutomine", [True])

    done = [(await fac.post("/settle", b)).json() for b in bodies]
    assert all(d["success"] for d in done), done
    rode_the_batch = [d for d, a in zip(done, answers, strict=True) if a["transaction"] == batch]
    assert len(rode_the_batch) == len(members)
    assert {d["transaction"] for d in rode_the_batch} == {bumped.tx_hash}
    for body in bodies:
        assert chain.balance_of(body["paymentRequirements"]["payTo"]) == int(
            body["paymentRequirements"]["amount"]
        )
    assert chain.rpc.request("eth_getTransactionReceipt", [batch]) is None


async def test_a_refused_batch_waits_for_its_key_and_then_settles(dev_chain_isolated, start_facilitator):
    """The node refuses a batch (its key cannot pay for gas): its settlements answer pending with the
    batch's hash, nothing is lost, and once the key is funded the same transaction settles them all."""
    chain = dev_chain_isolated
    key = chain.facilitator_keys[0]
    fac = await start_facilitator(
        network={"signer_keys": [key], "receipt_timeout_seconds": 1.0}, reconcile_interval_seconds=3600
    )
    signer = fac.core.settlement.networks[chain.chain_id].signers.signers[0].address
    payers = [chain.new_payer(1_000_000) for _ in range(5)]
    bodies = [paid_request(chain, p, 7_000 + i) for i, p in enumerate(payers)]
    funds = chain.rpc.request("eth_getBalance", [signer, "latest"])
    chain.rpc.request("evm_setAutomine", [False])
    try:
        lone = asyncio.create_task(fac.post("/settle", bodies[0]))
        await asyncio.sleep(0.3)  # stored and in the node's pool: the rest form a group of their own
        chain.rpc.request("anvil_setBalance", [signer, "0x0"])
        answers = [r.json() for r in await asyncio.gather(*(fac.post("/settle", b) for b in bodies[1:]))]
        assert {a["errorReason"] for a in answers} == {reasons.SETTLEMENT_PENDING}, answers
        assert len({a["transaction"] for a in answers}) < len(answers)  # they rode a batch
        assert all(chain.rpc.request("eth_getTransactionByHash", [a["transaction"]]) is None for a in answers)
        chain.rpc.request("anvil_setBalance", [signer, funds])
        await fac.core.reconciler.run_once()  # re-broadcasts the stored batch
        chain.rpc.request("evm_mine", [])
        await lone
    finally:
        chain.rpc.request("evm_setAutomine", [True])
    done = [(await fac.post("/settle", b)).json() for b in bodies[1:]]
    assert [d["transaction"] for d in done] == [a["transaction"] for a in answers]
    assert all(d["success"] for d in done), done
    for body in bodies:
        req = body["paymentRequirements"]
        assert chain.balance_of(req["payTo"]) == int(req["amount"])
