"""Settlement: idempotency under concurrency, throughput without failures, pending answers, RPC failover."""

import asyncio
import os
import time

import asyncpg
import pytest
from eth_account import Account

from shared.devchain.chain import DevChain
from shared.devchain.constants import DEV_ACCOUNT_KEYS
from shared.evm.calls import AUTHORIZATION_USED_TOPIC
from shared.x402 import reasons
from tests.fixtures.facilitator import free_port
from tests.support.payments import authorization, new_address, paid_request, requirements_v2, sign, v2_body

pytestmark = pytest.mark.integration


async def _tx_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM settlement_transactions"))
    finally:
        await conn.close()


async def test_twenty_concurrent_settles_of_one_authorization(dev_chain, facilitator, fresh_database):
    payer = dev_chain.new_payer(1_000_000)
    body = paid_request(dev_chain, payer, 25_000)
    pay_to = body["paymentRequirements"]["payTo"]

    responses = await asyncio.gather(*(facilitator.post("/settle", body) for _ in range(20)))
    answers = [r.json() for r in responses]
    assert all(r.status_code == 200 for r in responses)
    assert answers[0]["success"] is True, answers[0]
    assert all(a == answers[0] for a in answers), answers
    assert await _tx_count(fresh_database) == 1
    assert dev_chain.balance_of(pay_to) == 25_000

    again = (await facilitator.post("/settle", body)).json()
    assert again == answers[0]


async def test_two_replicas_on_one_database_send_one_transaction(
    dev_chain, start_facilitator, fresh_database
):
    first, second = await start_facilitator(), await start_facilitator()
    payer = dev_chain.new_payer(1_000_000)
    body = paid_request(dev_chain, payer, 7_000)
    responses = await asyncio.gather(
        *(fac.post("/settle", body) for fac in (first, second) for _ in range(5))
    )
    answers = [r.json() for r in responses]
    assert answers[0]["success"] is True, answers[0]
    assert all(a == answers[0] for a in answers)
    assert await _tx_count(fresh_database) == 1
    assert dev_chain.balance_of(body["paymentRequirements"]["payTo"]) == 7_000


async def test_same_nonce_with_another_payload_is_refused(dev_chain, facilitator):
    payer = dev_chain.new_payer(1_000_000)
    nonce = os.urandom(32)
    first_to, second_to = new_address(), new_address()
    first_auth = authorization(payer.address, first_to, 1_000, nonce=nonce)
    first = v2_body(
        requirements_v2(dev_chain, first_to, 1_000), first_auth, sign(dev_chain, payer.key.hex(), first_auth)
    )
    assert (await facilitator.post("/settle", first)).json()["success"] is True

    second_auth = authorization(payer.address, second_to, 1_000, nonce=nonce)
    second = v2_body(
        requirements_v2(dev_chain, second_to, 1_000),
        second_auth,
        sign(dev_chain, payer.key.hex(), second_auth),
    )
    answer = (await facilitator.post("/settle", second)).json()
    assert answer["success"] is False
    assert answer["errorReason"] == reasons.NONCE_ALREADY_USED
    assert dev_chain.balance_of(second_to) == 0


async def test_two_hundred_payments_at_concurrency_32(dev_chain, facilitator, fresh_database):
    payers = [dev_chain.new_payer(1_000_000) for _ in range(20)]
    bodies = [paid_request(dev_chain, payers[i % 20], 1_000 + i) for i in range(200)]
    gate = asyncio.Semaphore(32)

    async def settle(body):
        async with gate:
            return await facilitator.post("/settle", body)

    answers = [r.json() for r in await asyncio.gather(*(settle(b) for b in bodies))]
    failures = [a for a in answers if not a.get("success")]
    assert failures == []
    for body in bodies[::17]:
        req = body["paymentRequirements"]
        assert dev_chain.balance_of(req["payTo"]) == int(req["amount"])
    # Settlements in flight together share Multicall3 transactions: each answer names a mined
    # transaction that carries that very transfer.
    hashes = {a["transaction"] for a in answers}
    assert len(hashes) == await _tx_count(fresh_database) < 150
    metrics = (await facilitator.get("/metrics")).text
    series = f'x402_settlement_transaction_settlements_{{}}{{{{network="{dev_chain.network}"}}}}'
    assert f"{series.format('count')} {float(len(hashes))}" in metrics
    assert f"{series.format('sum')} 200.0" in metrics
    for answer, body in list(zip(answers, bodies, strict=True))[::23]:
        receipt = dev_chain.rpc.request("eth_getTransactionReceipt", [answer["transaction"]])
        auth = body["paymentPayload"]["payload"]["authorization"]
        topics = [log["topics"] for log in receipt["logs"]]
        assert any(t[0] == "0x" + AUTHORIZATION_USED_TOPIC.hex() and t[2] == auth["nonce"] for t in topics)
    conn = await asyncpg.connect(fresh_database)
    try:
        per_signer = await conn.fetch(
            "SELECT signer, array_agg(signer_nonce ORDER BY signer_nonce) AS nonces,"
            " count(DISTINCT created_at) AS commits FROM settlement_transactions GROUP BY signer"
        )
    finally:
        await conn.close()
    for row in per_signer:
        nonces = list(row["nonces"])
        assert nonces == list(range(nonces[0], nonces[0] + len(nonces))), "a nonce gap or repeat"
    # Concurrent settlements share commits: far fewer transactions than settlements stored them.
    assert sum(r["commits"] for r in per_signer) < 150


async def _all_broadcast(chain: DevChain, dsn: str, count: int) -> None:
    """Waits (10 s at most) until `count` settlements are stored as submitted and each of their
    transactions is in the node's pool, not mined."""
    deadline = time.monotonic() + 10.0
    while True:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT status, tx_hash FROM settlements")
        finally:
            await conn.close()
        if len(rows) == count and all(r["status"] == "submitted" for r in rows):
            found = [chain.rpc.request("eth_getTransactionByHash", [h]) for h in {r["tx_hash"] for r in rows}]
            if all(tx is not None for tx in found):
                assert all(tx["blockNumber"] is None for tx in found), found
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"never {count} settlements broadcast: {[dict(r) for r in rows]}")
        await asyncio.sleep(0.05)


async def test_a_transfer_that_fails_inside_a_batch_fails_alone(dev_chain, facilitator, fresh_database):
    """Two payments of one payer that together exceed its balance both verify; only one can be paid. The
    batch the other rode in pays everyone else; its authorization is unused, so it is verified again before
    going out alone, and fails for the payer's balance. Alone, its own transaction reverts instead."""
    payer = dev_chain.new_payer(5_000)
    others = [dev_chain.new_payer(1_000_000) for _ in range(6)]
    clash = [paid_request(dev_chain, payer, 4_000) for _ in range(2)]
    bodies = clash + [paid_request(dev_chain, p, 2_000 + i) for i, p in enumerate(others)]
    dev_chain.rpc.request("evm_setAutomine", [False])
    try:
        pending = [asyncio.create_task(facilitator.post("/settle", b)) for b in bodies]
        await _all_broadcast(dev_chain, fresh_database, len(bodies))
        dev_chain.rpc.request("evm_mine", [])
        answers = [r.json() for r in await asyncio.gather(*pending)]
    finally:
        dev_chain.rpc.request("evm_setAutomine", [True])
    assert [a["success"] for a in answers[2:]] == [True] * 6, answers
    assert sorted(a["success"] for a in answers[:2]) == [False, True], answers[:2]
    (failed,) = [a for a in answers[:2] if not a["success"]]
    rode_a_batch = len(await facilitator.core.ledger.rows_by_tx_hash(failed["transaction"])) > 1
    expected = reasons.INSUFFICIENT_BALANCE if rode_a_batch else reasons.TRANSACTION_FAILED
    assert failed["errorReason"] == expected, failed
    assert dev_chain.balance_of(payer.address) == 1_000
    for answer, body in zip(answers, bodies, strict=True):
        paid = int(body["paymentRequirements"]["amount"]) if answer["success"] else 0
        assert dev_chain.balance_of(body["paymentRequirements"]["payTo"]) == paid
    # They went out as batches: fewer transactions than settlements.
    assert await _tx_count(fresh_database) < len(bodies)


async def test_pending_answer_then_the_same_hash_once_mined(dev_chain, start_facilitator):
    fac = await start_facilitator(network={"receipt_timeout_seconds": 0.5})
    payer = dev_chain.new_payer(1_000_000)
    body = paid_request(dev_chain, payer, 3_000)
    dev_chain.rpc.request("evm_setAutomine", [False])
    try:
        pending = (await fac.post("/settle", body)).json()
    finally:
        dev_chain.rpc.request("evm_setAutomine", [True])
    assert pending["success"] is False
    assert pending["errorReason"] == reasons.SETTLEMENT_PENDING
    assert pending["transaction"].startswith("0x")
    dev_chain.rpc.request("evm_mine", [])
    done = (await fac.post("/settle", body)).json()
    assert done["success"] is True, done
    assert done["transaction"] == pending["transaction"]
    assert dev_chain.balance_of(body["paymentRequirements"]["payTo"]) == 3_000


async def test_first_rpc_url_dead_second_alive(dev_chain, start_facilitator):
    dead = f"http://127.0.0.1:{free_port()}"
    fac = await start_facilitator(network={"rpc_urls": [dead, dev_chain.rpc_url]})
    payer = dev_chain.new_payer(1_000_000)
    body = paid_request(dev_chain, payer, 4_000)
    assert (await fac.post("/verify", body)).json()["isValid"] is True
    answer = (await fac.post("/settle", body)).json()
    assert answer["success"] is True, answer
    assert dev_chain.balance_of(body["paymentRequirements"]["payTo"]) == 4_000
    ready = (await fac.get("/ready")).json()
    rpc_status = list(ready["networks"][dev_chain.network]["rpc"].values())
    assert [r["ok"] for r in rpc_status] == [False, True]


async def test_all_rpc_urls_dead_is_a_503_not_a_verdict(dev_chain, start_facilitator, fresh_database):
    fac = await start_facilitator(network={"rpc_urls": [f"http://127.0.0.1:{free_port()}"]})
    body = paid_request(dev_chain, dev_chain.new_payer(1_000), 1_000)
    for path in ("/verify", "/settle"):
        resp = await fac.post(path, body)
        assert resp.status_code == 503
        assert resp.json()["reason"] == reasons.NETWORK_UNAVAILABLE
    assert await _tx_count(fresh_database) == 0


async def test_receipt_for_unknown_and_foreign_hashes(dev_chain, facilitator):
    assert (await facilitator.get("/receipt/0x1234")).status_code == 400
    assert (await facilitator.get("/receipt/0x" + "ab" * 32)).status_code == 404


async def test_receipt_from_chain_for_a_transfer_sent_elsewhere(dev_chain, facilitator):
    # Someone else relays an authorization straight to the token; /receipt still answers from the chain.
    payer = dev_chain.new_payer(1_000_000)
    pay_to = new_address()
    auth = authorization(payer.address, pay_to, 2_500)
    sig = sign(dev_chain, payer.key.hex(), auth)
    from facilitator.exact_evm.signature_check import ecdsa_signer
    from shared.evm import calls

    ecdsa, _, _ = ecdsa_signer(b"\x00" * 32, sig)
    assert ecdsa is not None
    relayer = Account.from_key(DEV_ACCOUNT_KEYS[5])  # not one of the facilitator's keys
    receipt = dev_chain.rpc.send_transaction(
        relayer.key.hex(), to=dev_chain.usdc.address, data=calls.transfer_with_authorization_vrs(auth, ecdsa)
    )
    doc = (await facilitator.get(f"/receipt/{receipt.tx_hash}")).json()
    assert doc["receipt"]["source"] == "chain"
    assert doc["receipt"]["status"] == "confirmed"
    assert doc["receipt"]["payer"] == payer.address
    assert doc["receipt"]["amount"] == "2500"


async def test_a_signer_key_used_outside_the_facilitator_is_caught_up(
    dev_chain, start_facilitator, fresh_database
):
    """The node refuses the ledger's next nonce as too low: the ledger follows the chain, forgets the refused
    transaction and sends again with the same single key, without failing the payment."""
    key = dev_chain.facilitator_keys[0]
    address = Account.from_key(key).address
    fac = await start_facilitator(network={"signer_keys": [key]})
    payer = dev_chain.new_payer(1_000_000)
    first = (await fac.post("/settle", paid_request(dev_chain, payer, 1_000))).json()
    assert first["success"] is True, first
    for _ in range(2):  # someone else spends two nonces of the facilitator's key
        dev_chain.rpc.request("eth_sendTransaction", [{"from": address, "to": address, "value": "0x0"}])
    body = paid_request(dev_chain, payer, 2_000)
    second = (await fac.post("/settle", body)).json()
    assert second["success"] is True, second
    assert dev_chain.balance_of(body["paymentRequirements"]["payTo"]) == 2_000
    conn = await asyncpg.connect(fresh_database)
    try:
        nonces = [
            r["signer_nonce"]
            for r in await conn.fetch(
                "SELECT signer_nonce FROM settlement_transactions ORDER BY signer_nonce"
            )
        ]
        in_flight = await conn.fetchval("SELECT count(*) FROM settlements WHERE status <> 'confirmed'")
    finally:
        await conn.close()
    # The refused transaction is gone; the resend took the chain's next nonce, two past the first.
    assert nonces[1] == nonces[0] + 3 and len(nonces) == 2
    assert in_flight == 0


async def test_settle_reuses_a_verify_of_the_same_payload_a_moment_ago(dev_chain, start_facilitator):
    fac = await start_facilitator(verify_reuse_seconds=0.5)
    verifier = fac.core.verifier
    real_verify = verifier.verify
    calls: list[str] = []

    async def counting(payment, **kwargs):
        calls.append(payment.payer)
        return await real_verify(payment, **kwargs)

    verifier.verify = counting
    payer = dev_chain.new_payer(1_000_000)
    body = paid_request(dev_chain, payer, 1_000)
    assert (await fac.post("/verify", body)).json()["isValid"] is True
    assert (await fac.post("/settle", body)).json()["success"] is True
    assert len(calls) == 1  # the settle reused the verification

    late = paid_request(dev_chain, payer, 2_000)
    assert (await fac.post("/verify", late)).json()["isValid"] is True
    await asyncio.sleep(0.6)
    assert (await fac.post("/settle", late)).json()["success"] is True
    assert len(calls) == 3  # too old: verified again before anything was stored

    # A repeat after settlement is answered from the ledger, not from a verification.
    assert (await fac.post("/settle", body)).json()["success"] is True
    assert dev_chain.balance_of(body["paymentRequirements"]["payTo"]) == 1_000


async def test_a_settlement_that_cannot_be_priced_is_recorded_failed_and_sends_nothing(
    dev_chain, start_facilitator, fresh_database
):
    # A fee cap of one wei: the chain's base fee is above it, so no transaction may be signed.
    fac = await start_facilitator(network={"max_fee_per_gas_gwei": "0.000000001"})
    payer = dev_chain.new_payer(1_000_000)
    body = paid_request(dev_chain, payer, 3_000)
    answer = (await fac.post("/settle", body)).json()
    assert answer["success"] is False and answer["errorReason"] == reasons.UNEXPECTED_SETTLE_ERROR, answer
    assert "cap" in answer["errorMessage"]
    conn = await asyncpg.connect(fresh_database)
    try:
        row = await conn.fetchrow("SELECT status, error_reason, tx_hash FROM settlements")
        events = [
            r["to_status"] for r in await conn.fetch("SELECT to_status FROM settlement_events ORDER BY id")
        ]
    finally:
        await conn.close()
    assert row is not None
    assert (row["status"], row["error_reason"], row["tx_hash"]) == (
        "failed",
        reasons.UNEXPECTED_SETTLE_ERROR,
        None,
    )
    assert events == ["received", "failed"]
    assert await _tx_count(fresh_database) == 0
    assert dev_chain.balance_of(payer.address) == 1_000_000
    assert (await fac.post("/settle", body)).json() == answer  # the recorded outcome, not a new attempt
