"""Receipts of payments that share one transaction: someone (not the facilitator) sends one Multicall3
tryAggregate carrying three EIP-3009 transfers, one of which fails inside the batch. The facilitator answers
each payment from the chain by its nonce, and the client's checks verify ours from the logs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from client.cli import main
from client.receipts import JsonRpc, check_on_chain
from shared.devchain.constants import DEV_ACCOUNT_KEYS
from shared.evm import calls
from shared.evm.signatures import parse_ecdsa
from shared.receipt_signing import recover_receipt_signer
from tests.support.payments import authorization, new_address, paid_request, sign

pytestmark = pytest.mark.integration

RELAYER = DEV_ACCOUNT_KEYS[5]  # not one of the facilitator's keys


@pytest.fixture
def batch(dev_chain) -> dict[str, Any]:
    """One mined transaction to Multicall3: payer A's and B's transfers succeed, C (no funds) fails."""
    pay_to = new_address()
    payments = []
    inner = []
    for funds, amount, overload in [(1_000_000, 1_500, "vrs"), (1_000_000, 2_700, "bytes"), (0, 900, "vrs")]:
        payer = dev_chain.new_payer(funds)
        auth = authorization(payer.address, pay_to, amount)
        sig = sign(dev_chain, payer.key.hex(), auth)
        data = (
            calls.transfer_with_authorization_vrs(auth, parse_ecdsa(sig))
            if overload == "vrs"
            else calls.transfer_with_authorization_bytes(auth, sig)
        )
        inner.append((dev_chain.usdc.address, data))
        payments.append({"payer": payer.address, "amount": str(amount), "nonce": "0x" + auth.nonce.hex()})
    mined = dev_chain.rpc.send_transaction(
        RELAYER, to=calls.MULTICALL3_ADDRESS, data=calls.try_aggregate(inner, require_success=False)
    )
    assert mined.status == 1  # the batch succeeds although C's transfer failed inside it
    assert dev_chain.balance_of(pay_to) == 1_500 + 2_700
    return {"tx": mined.tx_hash, "payTo": pay_to, "payments": payments}


async def test_each_payment_of_a_batch_is_answered_from_the_chain_by_its_nonce(dev_chain, facilitator, batch):
    a, b, c = batch["payments"]
    for paid in (a, b):
        answer = await facilitator.get(f"/receipt/{batch['tx']}?nonce={paid['nonce']}")
        assert answer.status_code == 200, answer.text
        document = answer.json()
        receipt = document["receipt"]
        assert recover_receipt_signer(document) == document["signer"]
        assert receipt["source"] == "chain" and receipt["status"] == "confirmed"
        assert receipt["confirmations"] >= 1
        assert (receipt["payer"], receipt["amount"], receipt["nonce"]) == (
            paid["payer"],
            paid["amount"],
            paid["nonce"],
        )
        assert receipt["payTo"] == batch["payTo"] and receipt["token"] == dev_chain.usdc.address
        assert receipt["paymentsInTransaction"] == 3

    # C's transfer failed inside the batch (its nonce is matched whatever its case).
    failed = (await facilitator.get(f"/receipt/{batch['tx']}?nonce=0x{c['nonce'][2:].upper()}")).json()
    assert failed["receipt"]["status"] == "failed" and failed["receipt"]["payer"] == c["payer"]
    assert failed["receipt"]["confirmations"] == 0
    assert (await facilitator.get(f"/receipt/{batch['tx']}?nonce={c['nonce'][2:]}")).status_code == 400

    ambiguous = await facilitator.get(f"/receipt/{batch['tx']}")
    assert ambiguous.status_code == 409
    assert ambiguous.json() == {
        "error": "this transaction carries 3 payments; name one with ?nonce=0x...",
        "nonces": [a["nonce"], b["nonce"], c["nonce"]],
    }
    unknown = await facilitator.get(f"/receipt/{batch['tx']}?nonce=0x{'00' * 32}")
    assert unknown.status_code == 404


async def test_the_client_checks_a_batched_payment_on_chain_by_its_own_logs(dev_chain, facilitator, batch):
    a, _, c = batch["payments"]
    ours = (await facilitator.get(f"/receipt/{batch['tx']}?nonce={a['nonce']}")).json()["receipt"]
    with httpx.Client(timeout=10) as http:
        rpc = JsonRpc(http, dev_chain.rpc_url)
        checks, confirmations = check_on_chain(rpc, ours, batch["tx"])
        assert all(check.ok for check in checks), checks
        assert confirmations is not None and confirmations >= 1

        # The same transaction and amounts, another nonce: the chain shows no such authorization used.
        checks, _ = check_on_chain(rpc, {**ours, "nonce": "0x" + "00" * 32}, batch["tx"])
        assert [ch.name for ch in checks if not ch.ok] == ["events"]

        # C's transfer failed inside a batch that succeeded: status 1, but C's events are missing.
        theirs = (await facilitator.get(f"/receipt/{batch['tx']}?nonce={c['nonce']}")).json()["receipt"]
        checks, _ = check_on_chain(rpc, theirs, batch["tx"])
        failed = {ch.name: ch.detail for ch in checks if not ch.ok}
        assert list(failed) == ["events"] and c["nonce"] in failed["events"]


async def x402(capsys, *argv: str) -> tuple[int, str, str]:
    # In a thread: the facilitator is served by this test's event loop, which must keep running.
    code = await asyncio.to_thread(main, ["--stack", "/nonexistent/stack.json", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_x402_receipt_names_a_payment_of_a_batch_with_nonce(dev_chain, facilitator, batch, capsys):
    a, b, c = batch["payments"]
    where = ["--facilitator", facilitator.url, "--rpc-url", dev_chain.rpc_url]

    code, out, err = await x402(capsys, "receipt", batch["tx"], "--nonce", a["nonce"], *where)
    assert code == 0, out + err
    assert "Receipt verified." in out and a["payer"] in out and "one of 3 payments" in out

    code, out, err = await x402(capsys, "receipt", batch["tx"], *where, "--json")
    assert code == 2, out + err
    assert json.loads(out)["nonces"] == [a["nonce"], b["nonce"], c["nonce"]]
    assert "carries 3 payments; name one with --nonce" in err

    code, out, err = await x402(capsys, "receipt", batch["tx"], "--nonce", c["nonce"], *where, "--json")
    assert code == 1, out + err
    failed = {ch["name"] for ch in json.loads(out)["checks"] if not ch["ok"]}
    assert failed == {"facilitator status", "events"}  # "failed", and the chain shows no transfer of C


async def test_payments_the_facilitator_batched_are_answered_from_the_ledger_by_nonce(
    dev_chain, start_facilitator
):
    # One signer: while its first transaction is being stored, the other settlements queue up and go out
    # together as one batch.
    fac = await start_facilitator(network={"signer_keys": dev_chain.facilitator_keys[:1]})
    bodies = [paid_request(dev_chain, dev_chain.new_payer(1_000_000), 1_000 + i) for i in range(8)]
    settled = [r.json() for r in await asyncio.gather(*(fac.post("/settle", body) for body in bodies))]
    assert all(s["success"] for s in settled), settled
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for body, answer in zip(bodies, settled, strict=True):
        by_tx.setdefault(answer["transaction"], []).append(body["paymentPayload"]["payload"]["authorization"])
    tx, auths = max(by_tx.items(), key=lambda item: len(item[1]))
    assert len(auths) > 1, "no two settlements shared a transaction"

    for auth in auths:
        document = (await fac.get(f"/receipt/{tx}?nonce={auth['nonce']}")).json()
        receipt = document["receipt"]
        assert receipt["source"] == "ledger" and receipt["status"] == "confirmed"
        assert (receipt["payer"], receipt["amount"], receipt["nonce"]) == (
            auth["from"],
            auth["value"],
            auth["nonce"],
        )
        assert receipt["paymentsInTransaction"] == len(auths)
        assert recover_receipt_signer(document) == document["signer"]
    ambiguous = await fac.get(f"/receipt/{tx}")
    assert ambiguous.status_code == 409
    assert sorted(ambiguous.json()["nonces"]) == sorted(a["nonce"] for a in auths)

    # `x402 receipt --nonce` verifies one of them against the chain's logs.
    where = ["--facilitator", fac.url, "--rpc-url", dev_chain.rpc_url]
    code = await asyncio.to_thread(
        main, ["--stack", "/nonexistent/stack.json", "receipt", tx, "--nonce", auths[-1]["nonce"], *where]
    )
    assert code == 0
