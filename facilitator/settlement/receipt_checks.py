"""Pure check of a mined receipt against the authorization it was meant to execute."""

from __future__ import annotations

from typing import Any

from shared.evm.calls import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC


def _topic_address(topic: str) -> str:
    return "0x" + topic[-40:].lower()


def transfer_matches(
    receipt: dict[str, Any], *, token: str, payer: str, pay_to: str, amount: int, auth_nonce: str
) -> str | None:
    """None when the receipt shows this very transfer; otherwise what is missing.

    `transferWithAuthorization` emits AuthorizationUsed(payer, nonce) and then, as the token's next event,
    its Transfer. The two are checked as that pair: a transaction that carries several transfers (a
    batch) must not let one call's AuthorizationUsed vouch for another call's Transfer."""
    token_l, payer_l = token.lower(), payer.lower()
    events = [
        [str(t).lower() for t in log.get("topics") or []] + [str(log.get("data") or "0x")]
        for log in receipt.get("logs") or []
        if str(log.get("address", "")).lower() == token_l
    ]
    used = False
    for i, event in enumerate(events):
        if not _is_authorization_used(event, payer_l, auth_nonce.lower()):
            continue
        used = True
        following = events[i + 1] if i + 1 < len(events) else []
        if _is_transfer(following, payer_l, pay_to.lower(), amount):
            return None
    if not used:
        return "no AuthorizationUsed event for this payer and nonce"
    return "no Transfer event of the authorized amount to payTo"


def _is_authorization_used(event: list[str], payer: str, nonce: str) -> bool:
    return (
        len(event) == 4
        and event[0] == "0x" + AUTHORIZATION_USED_TOPIC.hex()
        and _topic_address(event[1]) == payer
        and event[2] == nonce
    )


def _is_transfer(event: list[str], payer: str, pay_to: str, amount: int) -> bool:
    if len(event) != 4 or event[0] != "0x" + TRANSFER_TOPIC.hex():
        return False
    value = int(event[3], 16) if event[3] not in ("0x", "") else 0
    return _topic_address(event[1]) == payer and _topic_address(event[2]) == pay_to and value == amount


def receipt_succeeded(receipt: dict[str, Any]) -> bool:
    return str(receipt.get("status", "0x0")) in ("0x1", "1")
