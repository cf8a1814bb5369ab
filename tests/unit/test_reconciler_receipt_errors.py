"""The reconciler (settlement/reconciler.py) never reads an error as "not mined": a receipt lookup that
errored defers the row, and a spent authorization is first matched against the row's own transactions
before the row is failed as used elsewhere."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from facilitator.settlement.ledger import SettlementKey, SettlementRow, StoredTransaction
from facilitator.settlement.reconciler import reconcile_row, resolve_missing_transfer
from facilitator.settlement.states import Status
from shared.evm.calls import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC
from shared.rpc.errors import RpcError
from shared.x402 import reasons
from tests.support.ledger_rows import settlement_row

CHAIN = 84532
TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYER = "0x00000000000000000000000000000000000000Aa"
PAY_TO = "0x00000000000000000000000000000000000000Bb"
NONCE = "0x" + "11" * 32
SIGNER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ROW = settlement_row(
    SettlementKey(CHAIN, TOKEN, PAYER, NONCE), PAY_TO, 1_000, status=Status.SUBMITTED, tx_hash="0x" + "b" * 64
)
# A paid the transfer; B replaced it (same signer nonce, higher fees) and is gone from the node.
A = StoredTransaction("0x" + "a" * 64, (ROW.id,), CHAIN, SIGNER, 4, b"\x02", 10**9, 0)
B = StoredTransaction("0x" + "b" * 64, (ROW.id,), CHAIN, SIGNER, 4, b"\x02", 2 * 10**9, 1)
USED = (1).to_bytes(32, "big")


def _word(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


PAID = {
    "status": "0x1",
    "blockNumber": "0x10",
    "blockHash": "0x" + "ee" * 32,
    "gasUsed": "0x5208",
    "logs": [
        {"address": TOKEN, "topics": ["0x" + AUTHORIZATION_USED_TOPIC.hex(), _word(PAYER), NONCE]},
        {
            "address": TOKEN,
            "topics": ["0x" + TRANSFER_TOPIC.hex(), _word(PAYER), _word(PAY_TO)],
            "data": "0x" + (1_000).to_bytes(32, "big").hex(),
        },
    ],
}


class Rpc:
    """Answers each receipt batch with the next of `rounds` (a receipt, None, or an RpcError per slot)."""

    def __init__(self, *rounds: list[Any]) -> None:
        self.rounds = list(rounds)

    async def batch(self, requests: list[tuple[str, list[Any]]]) -> list[Any]:
        assert {method for method, _ in requests} <= {"eth_getTransactionReceipt"}
        return self.rounds.pop(0)


class Eth:
    """B unknown to the node, its signer nonce taken, the authorization spent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def get_transaction(self, tx_hash: str) -> dict[str, Any] | None:
        return None

    async def get_transaction_count(self, address: str, block: str = "pending") -> int:
        return 5

    async def call(self, to: str, data: bytes, *, sender: str | None = None, block: str = "latest") -> bytes:
        return USED

    async def send_raw_transaction(self, raw: bytes, *, batch: bool = True) -> str:
        self.sent.append(raw)
        return "0x"


class Ledger:
    def __init__(self) -> None:
        self.finished: list[tuple[Status, dict[str, Any]]] = []

    async def transactions(self, settlement_id: int) -> list[StoredTransaction]:
        return [A, B]

    async def finish(self, settlement_id: int, new: Status, **fields: Any) -> SettlementRow:
        self.finished.append((new, fields))
        return replace(ROW, status=new, error_reason=fields.get("error_reason"))


class Service:
    def __init__(self, rpc: Rpc) -> None:
        self.ledger = Ledger()
        self.eth = Eth()
        self.networks: dict[int, Any] = {CHAIN: type("Network", (), {"rpc": rpc, "eth": self.eth})()}
        self.finalized: list[tuple[str, dict[str, Any]]] = []

    async def finalize(
        self, row: SettlementRow, receipt: dict[str, Any], tx_hash: str, *, attempt: str, wait: float = 0.0
    ) -> SettlementRow:
        self.finalized.append((tx_hash, receipt))
        return replace(row, status=Status.CONFIRMED, tx_hash=tx_hash)


async def reconcile(service: Service) -> SettlementRow:
    return await reconcile_row(service, ROW, attempt="test/1")  # type: ignore[arg-type]


async def test_an_errored_receipt_defers_the_row_instead_of_failing_it() -> None:
    service = Service(Rpc([RpcError(-32603, "header not found"), None]))
    assert await reconcile(service) == ROW
    assert service.ledger.finished == [] and service.finalized == []
    assert service.eth.sent == []


async def test_a_spent_authorization_is_matched_to_the_rows_own_transaction_first() -> None:
    # A mined after its receipt was read (the first round); the second read finds it carrying the transfer.
    service = Service(Rpc([None, None], [PAID, None]))
    done = await reconcile(service)
    assert (done.status, done.tx_hash) == (Status.CONFIRMED, A.tx_hash)
    assert service.finalized == [(A.tx_hash, PAID)]
    assert service.ledger.finished == []


async def test_an_errored_receipt_while_matching_a_spent_authorization_defers_the_row() -> None:
    service = Service(Rpc([None, None], [RpcError(-32603, "header not found"), None]))
    assert await reconcile(service) == ROW
    assert service.ledger.finished == [] and service.finalized == []


async def test_a_spent_authorization_none_of_ours_carried_fails_as_used_elsewhere() -> None:
    service = Service(Rpc([None, None], [None, None]))
    done = await reconcile(service)
    assert done.status is Status.FAILED
    ((status, fields),) = service.ledger.finished
    assert (status, fields["error_reason"]) == (Status.FAILED, reasons.NONCE_ALREADY_USED)


async def test_a_missing_transfer_with_an_errored_receipt_is_left_to_the_caller_to_defer() -> None:
    """`finalize` turns this RpcError into a deferral: the row stays submitted."""
    reverted = {**PAID, "status": "0x0", "logs": []}
    service = Service(Rpc([RpcError(-32603, "header not found"), reverted]))
    with pytest.raises(RpcError):
        await resolve_missing_transfer(
            service,  # type: ignore[arg-type]
            ROW,
            attempt="test/1",
            wait=0.0,
            carried=1,
            failure="transferWithAuthorization reverted on-chain",
            tx_hash=B.tx_hash,
            block_number=16,
            block_hash=PAID["blockHash"],  # type: ignore[arg-type]
            gas_used=21_000,
        )
    assert service.ledger.finished == [] and service.finalized == []
