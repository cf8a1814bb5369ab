"""Pure check of a mined receipt against the authorization it was meant to execute."""

from __future__ import annotations

from typing import Any

from shared.evm.transfer_logs import MissingEvent, missing_transfer_event

from .ledger import SettlementRow

_PROBLEMS = {
    MissingEvent.AUTHORIZATION_USED: "no AuthorizationUsed event for this payer and nonce",
    MissingEvent.TRANSFER: "no Transfer event of the authorized amount to payTo",
}


def transfer_matches(
    receipt: dict[str, Any], *, token: str, payer: str, pay_to: str, amount: int, auth_nonce: str
) -> str | None:
    """None when the receipt shows this very transfer; otherwise what is missing (pairing rule:
    shared.evm.transfer_logs.missing_transfer_event)."""
    missing = missing_transfer_event(
        receipt, token=token, payer=payer, pay_to=pay_to, amount=amount, nonce=auth_nonce
    )
    return None if missing is None else _PROBLEMS[missing]


def settlement_missing(receipt: dict[str, Any], row: SettlementRow) -> MissingEvent | None:
    """None when the receipt shows the transfer a ledger row authorizes; otherwise which event is missing."""
    key = row.key
    return missing_transfer_event(
        receipt, token=key.token, payer=key.payer, pay_to=row.pay_to, amount=row.amount, nonce=key.auth_nonce
    )


def carries_transfer(receipt: dict[str, Any], row: SettlementRow) -> bool:
    """The receipt is of a transaction that went through and shows the row's transfer."""
    return receipt_succeeded(receipt) and settlement_missing(receipt, row) is None


def describe(missing: MissingEvent) -> str:
    return _PROBLEMS[missing]


def receipt_succeeded(receipt: dict[str, Any]) -> bool:
    return str(receipt.get("status", "0x0")) in ("0x1", "1")
