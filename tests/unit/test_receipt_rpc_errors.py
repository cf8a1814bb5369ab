"""GET /receipt never signs what the chain did not say: a lookup that errored is HTTP 503, not a "pending"
status for a mined transaction, a "not found" for a transfer the chain may hold, or a confirmed payment
with no confirmations."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from facilitator.api.routes import ROUTES
from facilitator.receipts import ReceiptService
from facilitator.service import Facilitator
from facilitator.settlement.ledger import SettlementKey, SettlementRow
from facilitator.settlement.states import Status
from shared.evm import calls
from shared.evm.eip712 import Authorization
from shared.evm.signatures import EcdsaSignature
from shared.rpc.errors import RpcError, RpcUnavailable
from shared.tokens import Token
from shared.x402 import reasons
from tests.support.ledger_rows import settlement_row

USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYER = "0x2222222222222222222222222222222222222222"
PAY_TO = "0x4444444444444444444444444444444444444444"
NONCE = "0x" + "aa" * 32
TX = "0x" + "cd" * 32
RECEIPT_KEY = "0x" + "45" * 32
TOKEN = Token(84532, USDC, "USDC", "2", 6)
NODE_ERROR = RpcError(-32603, "header not found")

TRANSACTION = {
    "to": USDC,
    "input": "0x"
    + calls.transfer_with_authorization_vrs(
        Authorization(PAYER, PAY_TO, 10, 0, 2**40, bytes.fromhex(NONCE[2:])), EcdsaSignature(27, 1, 2)
    ).hex(),
}


def _word(address: str) -> str:
    return "0x" + address[2:].lower().rjust(64, "0")


MINED = {
    "status": "0x1",
    "blockNumber": "0x7",
    "blockHash": "0x" + "ee" * 32,
    "logs": [
        {"address": USDC, "topics": ["0x" + calls.AUTHORIZATION_USED_TOPIC.hex(), _word(PAYER), NONCE]},
        {
            "address": USDC,
            "topics": ["0x" + calls.TRANSFER_TOPIC.hex(), _word(PAYER), _word(PAY_TO)],
            "data": hex(10),
        },
    ],
}


class Registry:
    def get(self, chain_id: int, address: str) -> Token | None:
        return TOKEN if address.lower() == USDC.lower() else None


class Ledger:
    def __init__(self, rows: list[SettlementRow]) -> None:
        self.rows = rows

    async def rows_by_tx_hash(self, tx_hash: str) -> list[SettlementRow]:
        return self.rows if tx_hash == TX else []


class Rpc:
    def __init__(self, answer: list[Any] | Exception) -> None:
        self.answer = answer

    async def batch(self, requests: list[tuple[str, list[Any]]]) -> list[Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Eth:
    def __init__(self, head: int | Exception = 9) -> None:
        self.head = head

    async def block_number(self) -> int:
        if isinstance(self.head, Exception):
            raise self.head
        return self.head


def network(chain_id: int, rpc: Rpc, eth: Eth) -> Any:
    return SimpleNamespace(network=f"eip155:{chain_id}", chain_id=chain_id, rpc=rpc, eth=eth)


def receipts(
    answer: list[Any] | Exception, *, head: int | Exception = 9, rows: list[SettlementRow] | None = None
) -> ReceiptService:
    networks = {84532: network(84532, Rpc(answer), Eth(head))}
    return ReceiptService(Ledger(rows or []), networks, Registry())  # type: ignore[arg-type]


def ledger_row(status: Status) -> SettlementRow:
    mined = status is Status.CONFIRMED
    return settlement_row(
        SettlementKey(84532, USDC, PAYER, NONCE),
        PAY_TO,
        10,
        status=status,
        tx_hash=TX,
        block_number=7 if mined else None,
        block_hash="0x" + "ee" * 32 if mined else None,
    )


@pytest.mark.parametrize(
    "answer",
    [
        [TRANSACTION, NODE_ERROR],  # the receipt lookup errored: the transaction may well be mined
        [NODE_ERROR, MINED],  # the transaction lookup errored: it may be a payment
        RpcUnavailable("no endpoint answered"),
    ],
    ids=["receipt-error", "transaction-error", "unavailable"],
)
async def test_a_chain_lookup_that_errored_is_unavailable(answer: list[Any] | Exception) -> None:
    with pytest.raises(RpcUnavailable):
        await receipts(answer).lookup(TX)


async def test_the_same_lookup_answered_says_what_the_chain_says() -> None:
    pending = await receipts([TRANSACTION, None]).lookup(TX)
    assert pending is not None and (pending["status"], pending["confirmations"]) == ("pending", 0)
    mined = await receipts([TRANSACTION, MINED]).lookup(TX)
    assert mined is not None and (mined["status"], mined["confirmations"]) == ("confirmed", 3)
    assert await receipts([None, None]).lookup(TX) is None


async def test_a_head_that_errored_does_not_sign_zero_confirmations() -> None:
    with pytest.raises(RpcUnavailable):
        await receipts([TRANSACTION, MINED], head=NODE_ERROR).lookup(TX)
    with pytest.raises(RpcUnavailable):
        await receipts([], head=NODE_ERROR, rows=[ledger_row(Status.CONFIRMED)]).lookup(TX)
    # A row the ledger holds as pending needs nothing from the chain: answered all the same.
    pending = await receipts([], head=NODE_ERROR, rows=[ledger_row(Status.SUBMITTED)]).lookup(TX)
    assert pending is not None and (pending["status"], pending["confirmations"]) == ("pending", 0)


async def test_another_network_that_holds_the_transaction_still_answers() -> None:
    networks = {
        1: network(1, Rpc(RpcUnavailable("down")), Eth()),
        84532: network(84532, Rpc([TRANSACTION, MINED]), Eth()),
    }
    service = ReceiptService(Ledger([]), networks, Registry())  # type: ignore[arg-type]
    doc = await service.lookup(TX)
    assert doc is not None and doc["status"] == "confirmed"


def test_the_route_answers_503_and_signs_nothing() -> None:
    app = Starlette(routes=ROUTES)
    fac: Any = SimpleNamespace(receipts=receipts([TRANSACTION, NODE_ERROR]), _receipt_key=RECEIPT_KEY)
    fac.receipt = partial(Facilitator.receipt, fac)
    app.state.facilitator = fac
    answer = TestClient(app).get(f"/receipt/{TX}")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    body = answer.json()
    assert body["reason"] == reasons.NETWORK_UNAVAILABLE and "header not found" in body["error"]
    assert "receipt" not in body and "signature" not in body
