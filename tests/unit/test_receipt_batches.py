"""Receipts of batched payments, the pure parts: reading a Multicall3 tryAggregate input, choosing the
payment a nonce names, the receipt document of a batch, and GET /receipt's nonce parameter."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from facilitator.api.routes import ROUTES, receipt_nonce
from facilitator.receipts import (
    AmbiguousReceipt,
    ReceiptService,
    batch_calls,
    receipt_from_row,
    select_payment,
    transfers_in_transaction,
)
from facilitator.service import Facilitator
from facilitator.settlement.ledger import SettlementKey, SettlementRow
from facilitator.settlement.states import Status
from shared.evm import calls
from shared.evm.eip712 import Authorization
from shared.evm.signatures import EcdsaSignature
from shared.receipt_signing import recover_receipt_signer
from shared.tokens import Token
from tests.support.ledger_rows import settlement_row

USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
OTHER_TOKEN = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"  # a token, but not one this deployment accepts
FACTORY = "0x1111111111111111111111111111111111111111"
PAYER_A = "0x2222222222222222222222222222222222222222"
PAYER_B = "0x3333333333333333333333333333333333333333"
PAY_TO = "0x4444444444444444444444444444444444444444"
NONCE_A = "0x" + "aa" * 32
NONCE_B = "0x" + "bb" * 32
TOKEN = Token(84532, USDC, "USDC", "2", 6)
TX = "0x" + "cd" * 32
RECEIPT_KEY = "0x" + "45" * 32


def auth(payer: str, nonce: str, value: int) -> Authorization:
    return Authorization(payer, PAY_TO, value, 0, 2**40, bytes.fromhex(nonce[2:]))


def transfer_vrs(payer: str, nonce: str, value: int) -> bytes:
    return calls.transfer_with_authorization_vrs(auth(payer, nonce, value), EcdsaSignature(27, 1, 2))


def transfer_bytes(payer: str, nonce: str, value: int) -> bytes:
    return calls.transfer_with_authorization_bytes(auth(payer, nonce, value), b"\x01" * 65)


def token_at(address: str) -> Token | None:
    return TOKEN if address.lower() == USDC.lower() else None


# -- tryAggregate input ----------------------------------------------------------------------------------


def test_batch_calls_reads_back_what_try_aggregate_encodes():
    inner = [(USDC, transfer_vrs(PAYER_A, NONCE_A, 1)), (FACTORY, b"\x12\x34")]
    assert batch_calls(calls.try_aggregate(inner, require_success=False)) == inner
    assert batch_calls(calls.try_aggregate([], require_success=True)) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        transfer_vrs(PAYER_A, NONCE_A, 1),  # a transfer, not a batch
        calls.TRY_AGGREGATE + b"\x00" * 7,  # the selector and then garbage
        calls.try_aggregate([(USDC, b"")])[:-40],  # cut short
    ],
)
def test_batch_calls_of_anything_else_is_none(data):
    assert batch_calls(data) is None


def test_transfers_of_a_batch_keep_the_token_transfers_in_call_order():
    data = calls.try_aggregate(
        [
            (FACTORY, b"\xde\xad\xbe\xef"),  # an ERC-6492 deployment, say: not a payment
            (USDC, transfer_bytes(PAYER_B, NONCE_B, 20)),
            (OTHER_TOKEN, transfer_vrs(PAYER_A, "0x" + "cc" * 32, 5)),  # not a configured token
            (USDC, calls.balance_of(PAYER_A)),  # the token, but not a transfer
            (USDC, transfer_vrs(PAYER_A, NONCE_A, 10)),
        ]
    )
    found = transfers_in_transaction(calls.MULTICALL3_ADDRESS.lower(), data, token_at)
    assert [(t.address, d) for t, d in found] == [
        (USDC, {"payer": PAYER_B, "payTo": PAY_TO, "amount": 20, "nonce": NONCE_B}),
        (USDC, {"payer": PAYER_A, "payTo": PAY_TO, "amount": 10, "nonce": NONCE_A}),
    ]


def test_transfers_of_a_plain_transaction():
    direct = transfer_vrs(PAYER_A, NONCE_A, 10)
    assert [d["nonce"] for _, d in transfers_in_transaction(USDC, direct, token_at)] == [NONCE_A]
    # A batch counts only when sent to Multicall3; a tryAggregate input sent elsewhere is nothing we know.
    batch = calls.try_aggregate([(USDC, direct)])
    assert transfers_in_transaction(FACTORY, batch, token_at) == []
    assert transfers_in_transaction(calls.MULTICALL3_ADDRESS, direct, token_at) == []
    assert transfers_in_transaction(OTHER_TOKEN, direct, token_at) == []


# -- choosing the payment ---------------------------------------------------------------------------------


def test_select_payment_by_nonce_ignores_case():
    pairs = [(NONCE_A, "a"), (NONCE_B, "b")]
    assert select_payment(pairs, NONCE_B.upper().replace("0X", "0x")) == "b"
    assert select_payment(pairs, NONCE_A) == "a"
    assert select_payment(pairs, "0x" + "00" * 32) is None
    assert select_payment([], NONCE_A) is None


def test_select_payment_without_nonce():
    assert select_payment([(NONCE_A, "a")], None) == "a"
    assert select_payment([], None) is None
    with pytest.raises(AmbiguousReceipt) as caught:
        select_payment([(NONCE_A, "a"), (NONCE_B, "b")], None)
    assert caught.value.nonces == [NONCE_A, NONCE_B]
    assert str(caught.value) == "this transaction carries 2 payments; name one with ?nonce=0x..."


# -- the ledger's receipt document ------------------------------------------------------------------------

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def row(nonce: str, payer: str = PAYER_A, amount: int = 10) -> SettlementRow:
    return settlement_row(
        SettlementKey(84532, USDC, payer, nonce),
        PAY_TO,
        amount,
        id=1,
        payload_hash="h",
        calldata=b"",
        status=Status.CONFIRMED,
        tx_hash=TX,
        block_number=7,
        block_hash="0x" + "ee" * 32,
        gas_used=50_000,
        attempts=1,
        created_at=NOW,
        updated_at=NOW,
        submitted_at=NOW,
        finalized_at=NOW,
    )


NETWORK: Any = SimpleNamespace(network="eip155:84532", chain_id=84532)

# What a single payment's document held before batching; it is signed, so it must not change.
SINGLE_DOCUMENT = {
    "txHash": TX,
    "status": "confirmed",
    "source": "ledger",
    "network": "eip155:84532",
    "chainId": 84532,
    "token": USDC,
    "payer": PAYER_A,
    "payTo": PAY_TO,
    "amount": "10",
    "nonce": NONCE_A,
    "x402Version": 2,
    "blockNumber": 7,
    "blockHash": "0x" + "ee" * 32,
    "confirmations": 3,
    "createdAt": NOW.isoformat(),
    "submittedAt": NOW.isoformat(),
    "finalizedAt": NOW.isoformat(),
}


def test_a_single_payment_document_is_unchanged():
    assert receipt_from_row(row(NONCE_A), TX, 9, NETWORK) == SINGLE_DOCUMENT
    assert receipt_from_row(row(NONCE_A), TX, 9, NETWORK, carried=1) == SINGLE_DOCUMENT


def test_a_batched_payment_document_says_how_many_the_transaction_carries():
    doc = receipt_from_row(row(NONCE_A), TX, 9, NETWORK, carried=3)
    assert doc == {**SINGLE_DOCUMENT, "paymentsInTransaction": 3}


class Ledger:
    def __init__(self, rows: list[SettlementRow]) -> None:
        self.rows = rows

    async def rows_by_tx_hash(self, tx_hash: str) -> list[SettlementRow]:
        return self.rows if tx_hash == TX else []


class Eth:
    async def block_number(self) -> int:
        return 9


def service(rows: list[SettlementRow]) -> ReceiptService:
    network: Any = SimpleNamespace(network="eip155:84532", chain_id=84532, eth=Eth())
    registry: Any = None  # the chain path is not reached: the ledger knows the transaction
    return ReceiptService(Ledger(rows), {84532: network}, registry)  # type: ignore[arg-type]


async def test_lookup_in_the_ledger_by_nonce():
    batch = service([row(NONCE_A), replace(row(NONCE_B, PAYER_B, 20), id=2)])
    doc = await batch.lookup(TX.upper().replace("0X", "0x"), NONCE_B)
    assert doc is not None
    assert (doc["payer"], doc["amount"], doc["nonce"], doc["paymentsInTransaction"]) == (
        PAYER_B,
        "20",
        NONCE_B,
        2,
    )
    assert await batch.lookup(TX, "0x" + "00" * 32) is None
    with pytest.raises(AmbiguousReceipt) as caught:
        await batch.lookup(TX)
    assert caught.value.nonces == [NONCE_A, NONCE_B]

    single = service([row(NONCE_A)])
    assert await single.lookup(TX) == SINGLE_DOCUMENT
    assert await single.lookup(TX, NONCE_A) == SINGLE_DOCUMENT
    assert await single.lookup(TX, NONCE_B) is None


class Registry:
    def get(self, chain_id: int, address: str) -> Token | None:
        return token_at(address) if chain_id == 84532 else None


def chain_service(tx: dict[str, Any], mined: dict[str, Any] | None) -> ReceiptService:
    """A ledger that knows nothing, over a chain that holds `tx` (and `mined`, its receipt, if mined)."""

    class Rpc:
        async def batch(self, requests: list[tuple[str, list[Any]]]) -> list[Any]:
            assert [method for method, _ in requests] == [
                "eth_getTransactionByHash",
                "eth_getTransactionReceipt",
            ]
            return [tx, mined]

    network: Any = SimpleNamespace(network="eip155:84532", chain_id=84532, eth=Eth(), rpc=Rpc())
    return ReceiptService(Ledger([]), {84532: network}, Registry())  # type: ignore[arg-type]


def word(address: str) -> str:
    return "0x" + address[2:].lower().rjust(64, "0")


async def test_lookup_on_the_chain_answers_a_reused_nonce_with_the_call_that_happened():
    """A batch calls A's authorization twice (only one call can use the nonce; the first reverted inside the
    batch) and B's, which failed: the logs show A's second call only."""
    inner = [
        (USDC, transfer_vrs(PAYER_A, NONCE_A, 10)),
        (USDC, transfer_bytes(PAYER_A, NONCE_A, 15)),
        (USDC, transfer_vrs(PAYER_B, NONCE_B, 20)),
    ]
    tx = {"to": calls.MULTICALL3_ADDRESS, "input": "0x" + calls.try_aggregate(inner).hex()}
    used = "0x" + calls.AUTHORIZATION_USED_TOPIC.hex()
    moved = "0x" + calls.TRANSFER_TOPIC.hex()
    logs = [
        {"address": USDC, "topics": [used, word(PAYER_A), NONCE_A], "data": "0x"},
        {"address": USDC, "topics": [moved, word(PAYER_A), word(PAY_TO)], "data": hex(15)},
    ]
    mined = {"status": "0x1", "blockNumber": "0x7", "blockHash": "0x" + "ee" * 32, "logs": logs}
    receipts = chain_service(tx, mined)

    a = await receipts.lookup(TX, NONCE_A)
    assert a is not None
    assert (a["source"], a["status"], a["amount"], a["confirmations"]) == ("chain", "confirmed", "15", 3)
    b = await receipts.lookup(TX, NONCE_B)
    assert b is not None and (b["status"], b["confirmations"], b["paymentsInTransaction"]) == ("failed", 0, 3)
    with pytest.raises(AmbiguousReceipt) as caught:
        await receipts.lookup(TX)
    assert caught.value.nonces == [NONCE_A, NONCE_A, NONCE_B]

    pending = await chain_service(tx, None).lookup(TX, NONCE_B)
    assert pending is not None and (pending["status"], pending["confirmations"]) == ("pending", 0)


# -- GET /receipt/{txHash}?nonce= -------------------------------------------------------------------------


def test_receipt_nonce_parameter():
    assert receipt_nonce([]) == (None, None)
    assert receipt_nonce([NONCE_A.upper().replace("0X", "0x")]) == (NONCE_A, None)
    for bad in ["", "0x1234", NONCE_A[2:], NONCE_A + "0", NONCE_A + "\n", "0x" + "zz" * 32]:
        nonce, problem = receipt_nonce([bad])
        assert nonce is None
        assert problem == (
            "nonce must be 0x followed by 64 hex digits (the payment's EIP-3009 authorization nonce)"
        )
    assert receipt_nonce([NONCE_A, NONCE_B]) == (None, "give one nonce, not several")


@pytest.fixture
def http() -> TestClient:
    """GET /receipt over a ledger that holds a batch of two payments and a lone one."""
    lone = "0x" + "01" * 32
    rows = {TX: [row(NONCE_A), replace(row(NONCE_B, PAYER_B, 20), id=2)], lone: [row(NONCE_A)]}

    class TwoTransactions:
        async def rows_by_tx_hash(self, tx_hash: str) -> list[SettlementRow]:
            return rows.get(tx_hash, [])

    network: Any = SimpleNamespace(network="eip155:84532", chain_id=84532, eth=Eth())
    receipts = ReceiptService(TwoTransactions(), {84532: network}, None)  # type: ignore[arg-type]
    app = Starlette(routes=ROUTES)
    # The real Facilitator.receipt (lookup, then signing) over the fake ledger.
    fac: Any = SimpleNamespace(receipts=receipts, _receipt_key=RECEIPT_KEY)
    fac.receipt = partial(Facilitator.receipt, fac)
    app.state.facilitator = fac
    return TestClient(app)


def test_receipt_route_answers_for_the_named_payment(http):
    answer = http.get(f"/receipt/{TX}", params={"nonce": NONCE_B})
    assert answer.status_code == 200
    document = answer.json()
    assert document["receipt"]["nonce"] == NONCE_B and document["receipt"]["paymentsInTransaction"] == 2
    assert recover_receipt_signer(document) == document["signer"]

    lone = http.get(f"/receipt/0x{'01' * 32}")
    assert lone.status_code == 200 and "paymentsInTransaction" not in lone.json()["receipt"]


def test_receipt_route_without_a_nonce_for_a_batch_is_409_with_the_nonces(http):
    answer = http.get(f"/receipt/{TX}")
    assert answer.status_code == 409
    assert answer.json() == {
        "error": "this transaction carries 2 payments; name one with ?nonce=0x...",
        "nonces": [NONCE_A, NONCE_B],
    }


def test_receipt_route_refuses_a_malformed_nonce_and_misses_an_unknown_one(http):
    bad = http.get(f"/receipt/{TX}?nonce=0x12")
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("nonce must be 0x followed by 64 hex digits")
    two = http.get(f"/receipt/{TX}?nonce={NONCE_A}&nonce={NONCE_B}")
    assert two.status_code == 400 and two.json()["error"] == "give one nonce, not several"
    unknown = http.get(f"/receipt/{TX}", params={"nonce": "0x" + "00" * 32})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "no EIP-3009 transfer of a configured token with this hash and nonce"
