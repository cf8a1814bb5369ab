"""Offline-checkable payment receipts: the receipt object as canonical JSON (sorted keys, no spaces),
signed EIP-191 (`personal_sign`) by the facilitator's receipt key. Anyone can recover the signer."""

from __future__ import annotations

from typing import Any

import orjson
from eth_account import Account
from eth_account.messages import encode_defunct


def canonical_json(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def sign_receipt(receipt: dict[str, Any], private_key: str) -> dict[str, Any]:
    signed = Account.sign_message(encode_defunct(primitive=canonical_json(receipt)), private_key)
    return {
        "receipt": receipt,
        "signature": "0x" + bytes(signed.signature).hex(),
        "signer": Account.from_key(private_key).address,
        "signatureScheme": "eip191-canonical-json",
    }


def recover_receipt_signer(document: dict[str, Any]) -> str:
    """The address that signed `document["receipt"]`; compare it with the facilitator you trust."""
    message = encode_defunct(primitive=canonical_json(document["receipt"]))
    return str(Account.recover_message(message, signature=document["signature"]))
