"""Whether a mined receipt's logs show one EIP-3009 transfer: the check the facilitator makes before it calls
a settlement confirmed and the one `x402 receipt` makes against its own RPC. A pure function of the receipt
JSON, so neither side trusts the other's status, only the chain's logs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from typing import Any

from shared.evm.address import address_bytes, is_address
from shared.evm.calls import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC

_WORD = re.compile(r"0x[0-9a-fA-F]{64}")
_UINT256 = re.compile(r"0x[0-9a-fA-F]{1,64}")


class MissingEvent(Enum):
    """Which half of the transfer the logs do not show."""

    AUTHORIZATION_USED = "AuthorizationUsed"
    TRANSFER = "Transfer"


def missing_transfer_event(
    receipt: Mapping[str, Any], *, token: str, payer: str, pay_to: str, amount: int, nonce: str
) -> MissingEvent | None:
    """None when `receipt` shows `token` consuming authorization (`payer`, `nonce`) to move `amount` to
    `pay_to`; otherwise which event is missing.

    Each AuthorizationUsed(payer, nonce) of the token is paired with the token's first Transfer from
    `payer` after it, provided no other AuthorizationUsed of the token comes between: one call of a batch
    cannot vouch for another's Transfer, yet a token may emit other events between the two (FiatToken
    emits them back to back). Logs of other contracts prove nothing and are skipped; malformed logs and
    arguments never match and never raise."""
    token_b, payer_b, nonce_b = _address(token), _address(payer), _word(nonce)
    if token_b is None or payer_b is None or nonce_b is None:
        return MissingEvent.AUTHORIZATION_USED
    pay_to_b = _address(pay_to)
    logs = receipt.get("logs")
    used = False
    pending = False  # between our AuthorizationUsed and the event that settles its pairing
    for log in logs if isinstance(logs, list) else []:
        if not isinstance(log, Mapping) or _address(log.get("address")) != token_b:
            continue
        topics = log.get("topics")
        if not isinstance(topics, list) or not topics:
            continue
        kind = _word(topics[0])
        if kind == AUTHORIZATION_USED_TOPIC:
            # Also when malformed or someone else's: a Transfer after it belongs to that call, not ours.
            pending = (
                len(topics) == 3 and _topic_address(topics[1]) == payer_b and _word(topics[2]) == nonce_b
            )
            used = used or pending
        elif pending and kind == TRANSFER_TOPIC and len(topics) >= 2 and _topic_address(topics[1]) == payer_b:
            if (
                len(topics) == 3
                and pay_to_b is not None
                and _topic_address(topics[2]) == pay_to_b
                and _uint256(log.get("data")) == amount
            ):
                return None
            pending = False  # the payer's first Transfer is this authorization's, and it is not the one
    return MissingEvent.TRANSFER if used else MissingEvent.AUTHORIZATION_USED


def _address(value: object) -> bytes | None:
    # Any case, "0X" too: an upper-cased address still names the same 20 bytes (and so for words below).
    if not isinstance(value, str):
        return None
    value = value.lower()
    return address_bytes(value) if is_address(value) else None


def _word(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    value = value.lower()
    return bytes.fromhex(value[2:]) if _WORD.fullmatch(value) else None


def _topic_address(topic: object) -> bytes | None:
    # An indexed address is left-padded with zeros; any other word is no address.
    word = _word(topic)
    return word[12:] if word is not None and not any(word[:12]) else None


def _uint256(data: object) -> int | None:
    # A node pads the value to 32 bytes; shorter hex is the same number. Empty data carries no amount.
    return int(data, 16) if isinstance(data, str) and _UINT256.fullmatch(data.lower()) else None
