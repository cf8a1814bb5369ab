"""Which mined transaction decides a settlement (settlement/reconciler.py `deciding_receipt`): the one that
carries its transfer; else the one it now expects; else one holding that one's signer nonce. An earlier
transaction that failed to carry it while a re-send (another nonce) may still land decides nothing."""

from __future__ import annotations

from typing import Any

from facilitator.settlement.ledger import SettlementKey, StoredTransaction
from facilitator.settlement.reconciler import deciding_receipt
from shared.evm.calls import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC
from tests.support.ledger_rows import settlement_row

TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYER = "0x00000000000000000000000000000000000000Aa"
PAY_TO = "0x00000000000000000000000000000000000000Bb"
NONCE = "0x" + "11" * 32
SIGNER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ROW = settlement_row(SettlementKey(84532, TOKEN, PAYER, NONCE), PAY_TO, 1_000)


def _word(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


def tx(tag: str, nonce: int, replacement: int = 0) -> StoredTransaction:
    return StoredTransaction("0x" + tag * 64, (ROW.id,), 84532, SIGNER, nonce, b"\x02", 10**9, replacement)


def receipt(*, carries: bool, status: str = "0x1") -> dict[str, Any]:
    logs = []
    if carries:
        logs = [
            {"address": TOKEN, "topics": ["0x" + AUTHORIZATION_USED_TOPIC.hex(), _word(PAYER), NONCE]},
            {
                "address": TOKEN,
                "topics": ["0x" + TRANSFER_TOPIC.hex(), _word(PAYER), _word(PAY_TO)],
                "data": "0x" + (1_000).to_bytes(32, "big").hex(),
            },
        ]
    return {"status": status, "blockNumber": "0x10", "logs": logs}


def test_a_transaction_that_carries_the_transfer_decides_whatever_came_after() -> None:
    batch, resend = tx("a", 4), tx("b", 9)
    paid = receipt(carries=True)
    assert deciding_receipt(ROW, [(batch, paid)], resend) == (batch, paid)


def test_the_current_transaction_decides_when_it_is_mined() -> None:
    batch, resend = tx("a", 4), tx("b", 9)
    failed_inside, reverted = receipt(carries=False), receipt(carries=False, status="0x0")
    assert deciding_receipt(ROW, [(batch, failed_inside), (resend, reverted)], resend) == (resend, reverted)


def test_a_replaced_transaction_decides_when_it_took_the_nonce() -> None:
    original, replacement = tx("a", 4), tx("c", 4, replacement=1)
    reverted = receipt(carries=False, status="0x0")
    assert deciding_receipt(ROW, [(original, reverted)], replacement) == (original, reverted)


def test_a_batch_that_failed_the_transfer_decides_nothing_while_its_resend_may_land() -> None:
    batch, resend = tx("a", 4), tx("b", 9)
    assert deciding_receipt(ROW, [(batch, receipt(carries=False))], resend) is None
    assert deciding_receipt(ROW, [], resend) is None
