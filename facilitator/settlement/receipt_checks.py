"""Pure check of a mined receipt against the authorization it was meant to execute."""

from __future__ import annotations

from typing import Any

from shared.evm.calls import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC


def _topic_address(topic: str) -> str:
    return "0x" + topic[-40:].lower()


def transfer_matches(
    receipt: dict[str, Any], *, token: str, payer: str, pay_to: str, amount: int, auth_nonce: str
) -> str | None:
    """None when the receipt shows this very transfer; otherwise what is missing."""
    token_l = token.lower()
    used = transferred = False
    for log in receipt.get("logs") or []:
        if str(log.get("address", "")).lower() != token_l:
            continue
        topics = [str(t).lower() for t in log.get("topics") or []]
        if not topics:
            continue
        if topics[0] == "0x" + AUTHORIZATION_USED_TOPIC.hex() and len(topics) == 3:
            if _topic_address(topics[1]) == payer.lower() and topics[2] == auth_nonce.lower():
                used = True
        elif topics[0] == "0x" + TRANSFER_TOPIC.hex() and len(topics) == 3:
            data = str(log.get("data", "0x"))
            value = int(data, 16) if data not in ("0x", "") else 0
            if (
                _topic_address(topics[1]) == payer.lower()
                and _topic_address(topics[2]) == pay_to.lower()
                and value == amount
            ):
                transferred = True
    if not used:
        return "no AuthorizationUsed event for this payer and nonce"
    if not transferred:
        return "no Transfer event of the authorized amount to payTo"
    return None


def receipt_succeeded(receipt: dict[str, Any]) -> bool:
    return str(receipt.get("status", "0x0")) in ("0x1", "1")
