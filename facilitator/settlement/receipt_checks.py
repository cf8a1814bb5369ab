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


def settlement_problem(receipt: dict[str, Any], row: SettlementRow) -> str | None:
    """`transfer_matches` for the transfer a ledger row authorizes."""
    return transfer_matches(
        receipt,
        token=row.key.token,
        payer=row.key.payer,
        pay_to=row.pay_to,
        amount=row.amount,
        auth_nonce=row.key.auth_nonce,
    )


def receipt_succeeded(receipt: dict[str, Any]) -> bool:
    return str(receipt.get("status", "0x0")) in ("0x1", "1")
