"""Batched settlement (several transfers in one Multicall3 transaction) through crashes, lost transactions,
fee bumps and refusals: every payment ends confirmed exactly once, or failed with nothing charged."""

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest

from facilitator.settlement.ledger import Ledger, SignedTransaction
from facilitator.settlement.service import settlement_key
from facilitator.settlement.states import Status
from facilitator.settlement.submitter import Refusal
from shared.devchain.chain import DevChain
from shared.devchain.constants import DEV_ACCOUNT_KEYS
from shared.evm import calls
from shared.evm.signatures import parse_ecdsa
from shared.rpc.errors import RpcError
from shared.x402 import reasons
from tests.support.facilitator_process import FacilitatorProcess, settle
from tests.support.payments import paid_request
from tests.support.settle_together import first_transactions, settle_in_one_group, verified_ahead

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
        first = asyncio.create_task(settle(fac.url, bodies[0]))
        await asyncio.sleep(0.3)  # a lone settlement goes at once; the rest arrive while it waits
        rest = [asyncio.create_task(settle(fac.url, b)) for b in bodies[1:]]
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
            again = await settle(fac.url, body)
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


def _authorization_used_logs(chain: DevChain, payer: str, nonce: str) -> int:
    """How many times the chain says this authorization was used: once at most, whoever sent it."""
    topics = ["0x" + calls.AUTHORIZATION_USED_TOPIC.hex(), "0x" + "00" * 12 + payer[2:].lower(), nonce]
    filt = {"address": chain.usdc.address, "fromBlock": "0x0", "toBlock": "latest", "topics": topics}
    return len(chain.rpc.request("eth_getLogs", [filt]))


async def _next_nonce(ledger: Ledger, chain_id: int, signer: str) -> int:
    return int(
        await ledger.pool.fetchval(
            "SELECT next_nonce FROM signer_nonces WHERE chain_id=$1 AND address=$2", chain_id, signer
        )
    )


def _counting(monkeypatch: pytest.MonkeyPatch, ledger: Ledger, method: str) -> list[tuple[Any, ...]]:
    """Records the arguments of every call of one ledger method."""
    seen: list[tuple[Any, ...]] = []
    real = getattr(ledger, method)

    async def counted(*args: Any) -> Any:
        seen.append(args)
        return await real(*args)

    monkeypatch.setattr(ledger, method, counted)
    return seen


async def test_a_refused_batch_is_undone_once_and_each_settlement_goes_again_on_another_key(
    dev_chain_isolated, start_facilitator, fresh_database, monkeypatch
):
    """The node refuses a batch (its key cannot pay for gas). The ledger forgets the transaction and takes
    its nonce back once for the whole batch; each settlement goes again alone on the other key and settles
    once; the refused key's next transaction takes the nonce back without a gap."""
    chain = dev_chain_isolated
    fac = await start_facilitator(
        network={"signer_keys": list(chain.facilitator_keys[:2])},
        verify_reuse_seconds=60,
        reconcile_interval_seconds=3600,
    )
    network = fac.core.settlement.networks[chain.chain_id]
    ledger = fac.core.settlement.ledger
    pool = network.signers
    drained, funded = pool.signers
    payers = [chain.new_payer(1_000_000) for _ in range(5)]
    bodies = [paid_request(chain, p, 6_000 + i) for i, p in enumerate(payers)]
    payments = await verified_ahead(fac, bodies)
    rewinds = _counting(monkeypatch, ledger, "rewind_unused_nonce")
    # The other key looks busy, so the group's batch goes to the drained key; retries avoid the refused one.
    busy = 1_000
    for _ in range(busy):
        pool.acquire(funded)
    funds = chain.rpc.request("eth_getBalance", [drained.address, "latest"])
    chain.rpc.request("anvil_setBalance", [drained.address, "0x0"])
    chain_nonce = int(chain.rpc.request("eth_getTransactionCount", [drained.address, "pending"]), 16)

    answers = await settle_in_one_group(fac, payments)

    assert all(a.success for a in answers), answers
    firsts = await first_transactions(fresh_database)
    batches = {firsts["0x" + p.authorization.nonce.hex()] for p in payments}
    assert len(batches) == 1, firsts  # they rode one transaction, with the drained key
    ((batch, batch_signer),) = batches
    assert batch_signer == drained.address
    assert [args[3] for args in rewinds] == [batch]  # undone once for all of its settlements
    assert chain.rpc.request("eth_getTransactionByHash", [batch]) is None
    assert await ledger.rows_by_tx_hash(batch) == []
    assert len({a.transaction for a in answers}) == len(answers) and batch not in {
        a.transaction for a in answers
    }
    for answer, payment, body, payer in zip(answers, payments, bodies, payers, strict=True):
        row = await ledger.get_by_key(settlement_key(payment, chain.chain_id))
        assert row is not None and row.tx_hash == answer.transaction
        (alone,) = await ledger.transactions(row.id)
        assert alone.signer == funded.address and alone.settlement_ids == (row.id,)
        amount = int(body["paymentRequirements"]["amount"])
        assert chain.balance_of(body["paymentRequirements"]["payTo"]) == amount
        assert chain.balance_of(payer.address) == 1_000_000 - amount
        assert _authorization_used_logs(chain, payer.address, row.key.auth_nonce) == 1
    # Each settlement let go of each key it held exactly once.
    assert pool.in_flight(drained.address) == 0 and pool.in_flight(funded.address) == busy

    # The drained key is not stuck behind the refused transaction: funded again, its next settlement takes
    # the nonce the batch had.
    assert await _next_nonce(ledger, chain.chain_id, drained.address) == chain_nonce
    chain.rpc.request("anvil_setBalance", [drained.address, funds])
    body = paid_request(chain, chain.new_payer(1_000_000), 9_000)
    after = (await fac.post("/settle", body)).json()
    assert after["success"] is True, after
    (row,) = await ledger.rows_by_tx_hash(after["transaction"])
    (tx,) = await ledger.transactions(row.id)
    assert (tx.signer, tx.signer_nonce) == (drained.address, chain_nonce)
    for _ in range(busy):
        pool.release(funded)


async def test_a_batch_refused_by_an_endpoint_after_the_node_took_it_is_kept_and_settles(
    dev_chain_isolated, start_facilitator, monkeypatch
):
    """A send can be refused by one endpoint after another took it (the client retries on failover): the
    refusal then names a transaction the chain knows. Undoing it would drop a transaction that lands and
    re-send payments that are already charged; instead it is kept and awaited, and every payment settles
    once in it."""
    chain = dev_chain_isolated
    fac = await start_facilitator(verify_reuse_seconds=60, reconcile_interval_seconds=3600)
    network = fac.core.settlement.networks[chain.chain_id]
    ledger = fac.core.settlement.ledger
    submitter = fac.core.settlement.submitters[chain.chain_id]
    payers = [chain.new_payer(1_000_000) for _ in range(4)]
    bodies = [paid_request(chain, p, 6_500 + i) for i, p in enumerate(payers)]
    payments = await verified_ahead(fac, bodies)
    rewinds = _counting(monkeypatch, ledger, "rewind_unused_nonce")
    forgets = _counting(monkeypatch, ledger, "forget_transaction")
    real_send = submitter._send

    async def taken_then_refused(signed: SignedTransaction) -> Refusal | None:
        assert await real_send(signed) is None  # the node takes it...
        return Refusal(RpcError(-32000, "nonce too low"))  # ...and the retry on another endpoint is refused

    monkeypatch.setattr(submitter, "_send", taken_then_refused)

    answers = await settle_in_one_group(fac, payments)

    assert all(a.success for a in answers), answers
    (batch,) = {a.transaction for a in answers}
    assert len(await ledger.rows_by_tx_hash(batch)) == len(payments)
    assert rewinds == [] and forgets == []
    for body, payer, payment in zip(bodies, payers, payments, strict=True):
        amount = int(body["paymentRequirements"]["amount"])
        assert chain.balance_of(payer.address) == 1_000_000 - amount
        key = settlement_key(payment, chain.chain_id)
        assert _authorization_used_logs(chain, payer.address, key.auth_nonce) == 1
    assert all(network.signers.in_flight(a) == 0 for a in network.signers.addresses)


async def test_a_refused_batch_on_the_only_key_fails_uncharged_and_leaves_the_key_usable(
    dev_chain_isolated, start_facilitator, monkeypatch
):
    """With no other key to go to, each settlement of the refused batch fails as a lone one does (every
    signer refused), nothing is charged, and the key's nonce is free for what comes next."""
    chain = dev_chain_isolated
    fac = await start_facilitator(
        network={"signer_keys": [chain.facilitator_keys[0]]},
        verify_reuse_seconds=60,
        reconcile_interval_seconds=3600,
    )
    network = fac.core.settlement.networks[chain.chain_id]
    ledger = fac.core.settlement.ledger
    (signer,) = network.signers.signers
    payers = [chain.new_payer(1_000_000) for _ in range(4)]
    bodies = [paid_request(chain, p, 3_000 + i) for i, p in enumerate(payers)]
    payments = await verified_ahead(fac, bodies)
    rewinds = _counting(monkeypatch, ledger, "rewind_unused_nonce")
    funds = chain.rpc.request("eth_getBalance", [signer.address, "latest"])
    chain.rpc.request("anvil_setBalance", [signer.address, "0x0"])
    chain_nonce = int(chain.rpc.request("eth_getTransactionCount", [signer.address, "pending"]), 16)

    answers = await settle_in_one_group(fac, payments)

    assert [(a.success, a.error_reason, a.transaction) for a in answers] == [
        (False, reasons.UNEXPECTED_SETTLE_ERROR, "")
    ] * len(answers), answers
    assert len(rewinds) == 1
    for payment, body, payer in zip(payments, bodies, payers, strict=True):
        assert chain.balance_of(body["paymentRequirements"]["payTo"]) == 0
        assert chain.balance_of(payer.address) == 1_000_000
        key = settlement_key(payment, chain.chain_id)
        assert _authorization_used_logs(chain, payer.address, key.auth_nonce) == 0
    assert network.signers.in_flight(signer.address) == 0
    assert await _next_nonce(ledger, chain.chain_id, signer.address) == chain_nonce

    chain.rpc.request("anvil_setBalance", [signer.address, funds])
    body = paid_request(chain, chain.new_payer(1_000_000), 9_000)
    after = (await fac.post("/settle", body)).json()
    assert after["success"] is True, after
    (row,) = await ledger.rows_by_tx_hash(after["transaction"])
    (tx,) = await ledger.transactions(row.id)
    assert tx.signer_nonce == chain_nonce


async def test_a_batch_refused_as_nonce_too_low_catches_up_once_and_settles_everyone(
    dev_chain_isolated, start_facilitator, fresh_database, monkeypatch
):
    """Someone spent the key's nonces outside the facilitator: the node refuses the batch as nonce too low.
    The ledger follows the chain once for the whole batch, and each settlement goes again on the same key,
    on the chain's next nonces."""
    chain = dev_chain_isolated
    key = chain.facilitator_keys[0]
    fac = await start_facilitator(
        network={"signer_keys": [key]}, verify_reuse_seconds=60, reconcile_interval_seconds=3600
    )
    network = fac.core.settlement.networks[chain.chain_id]
    ledger = fac.core.settlement.ledger
    (signer,) = network.signers.signers
    payers = [chain.new_payer(1_000_000) for _ in range(4)]
    bodies = [paid_request(chain, p, 4_000 + i) for i, p in enumerate(payers)]
    payments = await verified_ahead(fac, bodies)
    catch_ups = _counting(monkeypatch, ledger, "sync_signer_nonce")
    forgotten = _counting(monkeypatch, ledger, "forget_transaction")
    ledger_nonce = await _next_nonce(ledger, chain.chain_id, signer.address)
    for _ in range(2):
        chain.rpc.request(
            "eth_sendTransaction", [{"from": signer.address, "to": signer.address, "value": "0x0"}]
        )

    answers = await settle_in_one_group(fac, payments)

    assert all(a.success for a in answers), answers
    ((batch, _),) = set((await first_transactions(fresh_database)).values())
    assert [args[0] for args in forgotten] == [batch] and len(catch_ups) == 1
    nonces = []
    for answer, payment, body in zip(answers, payments, bodies, strict=True):
        row = await ledger.get_by_key(settlement_key(payment, chain.chain_id))
        assert row is not None and row.tx_hash == answer.transaction != batch
        (tx,) = await ledger.transactions(row.id)
        nonces.append(tx.signer_nonce)
        assert chain.balance_of(body["paymentRequirements"]["payTo"]) == int(
            body["paymentRequirements"]["amount"]
        )
    assert sorted(nonces) == list(range(ledger_nonce + 2, ledger_nonce + 2 + len(answers)))
    assert network.signers.in_flight(signer.address) == 0


async def test_a_transfer_front_run_inside_a_batch_fails_as_used_and_is_paid_once(
    dev_chain_isolated, start_facilitator
):
    """A third party relays one of the signed authorizations straight to the token after the facilitator
    verified it: inside the batch that transfer fails. The chain says the authorization is used, so it fails
    as such (the payee was paid once, by the other transaction), and the batch settles everyone else."""
    chain = dev_chain_isolated
    fac = await start_facilitator(verify_reuse_seconds=60, reconcile_interval_seconds=3600)
    payers = [chain.new_payer(1_000_000) for _ in range(4)]
    bodies = [paid_request(chain, p, 5_000 + i) for i, p in enumerate(payers)]
    payments = await verified_ahead(fac, bodies)
    taken = payments[1]
    chain.rpc.send_transaction(
        DEV_ACCOUNT_KEYS[5],  # not one of the facilitator's keys
        to=chain.usdc.address,
        data=calls.transfer_with_authorization_vrs(taken.authorization, parse_ecdsa(taken.signature)),
    )

    answers = await settle_in_one_group(fac, payments)

    assert len({a.transaction for a in answers}) == 1  # one batch
    assert [a.success for a in answers] == [True, False, True, True], answers
    assert answers[1].error_reason == reasons.NONCE_ALREADY_USED, answers[1]
    for body, payer in zip(bodies, payers, strict=True):
        amount = int(body["paymentRequirements"]["amount"])
        assert chain.balance_of(body["paymentRequirements"]["payTo"]) == amount
        assert chain.balance_of(payer.address) == 1_000_000 - amount
        nonce = body["paymentPayload"]["payload"]["authorization"]["nonce"]
        assert _authorization_used_logs(chain, payer.address, nonce) == 1


async def test_a_lone_transfer_front_run_reverts_and_fails_as_used(dev_chain_isolated, start_facilitator):
    """The same race with a settlement sent alone: its transaction reverts. The chain says the
    authorization is used, so the answer is that (the payee was paid, by the other transaction), not a
    revert that would read as nothing charged."""
    chain = dev_chain_isolated
    fac = await start_facilitator(verify_reuse_seconds=60, reconcile_interval_seconds=3600)
    payer = chain.new_payer(1_000_000)
    body = paid_request(chain, payer, 5_000)
    (payment,) = await verified_ahead(fac, [body])
    chain.rpc.send_transaction(
        DEV_ACCOUNT_KEYS[5],
        to=chain.usdc.address,
        data=calls.transfer_with_authorization_vrs(payment.authorization, parse_ecdsa(payment.signature)),
    )

    (answer,) = await settle_in_one_group(fac, [payment])

    assert (answer.success, answer.error_reason) == (False, reasons.NONCE_ALREADY_USED), answer
    receipt = chain.rpc.request("eth_getTransactionReceipt", [answer.transaction])
    assert receipt["status"] == "0x0"  # its own transaction reverted
    assert chain.balance_of(body["paymentRequirements"]["payTo"]) == 5_000
    assert chain.balance_of(payer.address) == 1_000_000 - 5_000


async def test_a_transfer_that_failed_inside_a_batch_unused_goes_again_alone(
    dev_chain_isolated, start_facilitator, monkeypatch
):
    """Two payments of one payer ride one batch; its balance covers one, so the other's transfer fails
    inside the batch. Its authorization is unused: it goes again in a transaction of its own, verified
    afresh (the payer has been topped up meanwhile), and settles; nothing is paid twice."""
    chain = dev_chain_isolated
    fac = await start_facilitator(verify_reuse_seconds=60, reconcile_interval_seconds=3600)
    ledger = fac.core.settlement.ledger
    payer = chain.new_payer(5_000)
    others = [chain.new_payer(1_000_000) for _ in range(2)]
    bodies = [paid_request(chain, payer, 4_000) for _ in range(2)]
    bodies += [paid_request(chain, p, 2_000 + i) for i, p in enumerate(others)]
    payments = await verified_ahead(fac, bodies)
    verifier = fac.core.verifier
    real_verify = verifier.verify
    reverified: list[str] = []

    async def topping_up(payment, **kwargs):
        if kwargs.get("estimate_gas"):  # the re-send's own verification, after the batch was mined
            reverified.append(payment.payer)
            chain.mint(payer.address, 4_000)
        return await real_verify(payment, **kwargs)

    monkeypatch.setattr(verifier, "verify", topping_up)

    answers = await settle_in_one_group(fac, payments)

    assert all(a.success for a in answers), answers
    assert reverified == [payer.address]
    batch = answers[0].transaction  # the first of the payer's two went through in the batch
    assert [a.transaction == batch for a in answers] == [True, False, True, True]
    again = await ledger.rows_by_tx_hash(answers[1].transaction)
    assert [r.key.auth_nonce for r in again] == [settlement_key(payments[1], chain.chain_id).auth_nonce]
    assert len(await ledger.rows_by_tx_hash(batch)) == len(bodies)
    assert chain.balance_of(payer.address) == 5_000 + 4_000 - 8_000
    for body in bodies:
        assert chain.balance_of(body["paymentRequirements"]["payTo"]) == int(
            body["paymentRequirements"]["amount"]
        )
        nonce = body["paymentPayload"]["payload"]["authorization"]["nonce"]
        owner = body["paymentPayload"]["payload"]["authorization"]["from"]
        assert _authorization_used_logs(chain, owner, nonce) == 1


async def test_a_refused_batch_whose_nonce_cannot_come_back_waits_for_its_key_and_then_settles(
    dev_chain_isolated, start_facilitator, monkeypatch
):
    """The node refuses a batch (its key cannot pay for gas), but the key's next nonce went to another
    settlement meanwhile: taking the batch's nonce back would leave a hole under it. The batch stays stored,
    its settlements answer pending with its hash, and once the key is funded the same transaction settles
    them all."""
    chain = dev_chain_isolated
    fac = await start_facilitator(
        network={"signer_keys": [chain.facilitator_keys[0]], "receipt_timeout_seconds": 1.0},
        verify_reuse_seconds=60,
        reconcile_interval_seconds=3600,
    )
    network = fac.core.settlement.networks[chain.chain_id]
    ledger = fac.core.settlement.ledger
    (signer,) = network.signers.signers
    payers = [chain.new_payer(1_000_000) for _ in range(4)]
    bodies = [paid_request(chain, p, 7_000 + i) for i, p in enumerate(payers)]
    payments = await verified_ahead(fac, bodies)
    (later,) = await verified_ahead(fac, [paid_request(chain, chain.new_payer(1_000_000), 8_000)])
    funds = chain.rpc.request("eth_getBalance", [signer.address, "latest"])
    real_rewind = ledger.rewind_unused_nonce
    rewinds: list[bool] = []
    later_answer: list[asyncio.Task[Any]] = []

    async def after_a_later_settlement(chain_id: int, address: str, nonce: int, tx_hash: str) -> bool:
        # Between the refusal and its undo, the key is funded and a later settlement takes the next nonce.
        chain.rpc.request("anvil_setBalance", [address, funds])
        later_answer.append(asyncio.create_task(fac.core.settle(later)))
        key = settlement_key(later, chain.chain_id)
        for _ in range(500):
            row = await ledger.get_by_key(key)
            if row is not None and row.status is Status.SUBMITTED:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the later settlement was never stored")
        rewinds.append(await real_rewind(chain_id, address, nonce, tx_hash))
        return rewinds[-1]

    monkeypatch.setattr(ledger, "rewind_unused_nonce", after_a_later_settlement)
    chain.rpc.request("anvil_setBalance", [signer.address, "0x0"])

    answers = await settle_in_one_group(fac, payments)

    assert rewinds == [False]
    assert {a.error_reason for a in answers} == {reasons.SETTLEMENT_PENDING}, answers
    (batch,) = {a.transaction for a in answers}
    assert len(await ledger.rows_by_tx_hash(batch)) == len(answers)
    assert chain.rpc.request("eth_getTransactionByHash", [batch]) is None
    pending = await later_answer[0]  # queued behind the batch's nonce at the node
    assert pending.error_reason == reasons.SETTLEMENT_PENDING, pending
    assert network.signers.in_flight(signer.address) == 0
    await fac.core.reconciler.run_once()  # re-broadcasts the stored batch: the later nonce follows it
    done = [(await fac.post("/settle", b)).json() for b in bodies]
    assert [d["transaction"] for d in done] == [batch] * len(bodies)
    assert all(d["success"] for d in done), done
    for body in bodies:
        req = body["paymentRequirements"]
        assert chain.balance_of(req["payTo"]) == int(req["amount"])
    again = await fac.core.settle(later)
    assert again.success is True, again
