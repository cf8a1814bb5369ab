"""Signing exact/EVM EIP-3009 payments, as an x402 client does: a random 32-byte nonce, validAfter
back-dated 600 s (clock skew), validBefore now + maxTimeoutSeconds."""

from __future__ import annotations

import os
import time
from typing import Any

from coincurve import PrivateKey

from shared.evm.address import normalize_address
from shared.evm.eip712 import Authorization, authorization_digest
from shared.networks import chain_id_of
from shared.x402.models import (
    PaymentPayloadV1,
    PaymentPayloadV2,
    PaymentRequirementsV1,
    PaymentRequirementsV2,
)

CLOCK_SKEW_SECONDS = 600


def sign_digest(private_key: str | bytes, digest: bytes) -> bytes:
    """65-byte r||s||v (v = 27/28) with low s, as wallets produce."""
    key = PrivateKey(
        bytes.fromhex(private_key[2:] if private_key.startswith("0x") else private_key)
        if isinstance(private_key, str)
        else private_key
    )
    sig = key.sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes([sig[64] + 27])


def build_authorization(
    *,
    payer: str,
    pay_to: str,
    value: int,
    max_timeout_seconds: int,
    now: int | None = None,
    nonce: bytes | None = None,
) -> Authorization:
    now = int(time.time()) if now is None else now
    return Authorization(
        from_=normalize_address(payer),
        to=normalize_address(pay_to),
        value=value,
        valid_after=now - CLOCK_SKEW_SECONDS,
        valid_before=now + max_timeout_seconds,
        nonce=nonce if nonce is not None else os.urandom(32),
    )


def exact_payload(auth: Authorization, signature: bytes) -> dict[str, Any]:
    return {
        "signature": "0x" + signature.hex(),
        "authorization": {
            "from": auth.from_,
            "to": auth.to,
            "value": str(auth.value),
            "validAfter": str(auth.valid_after),
            "validBefore": str(auth.valid_before),
            "nonce": "0x" + auth.nonce.hex(),
        },
    }


def sign_authorization(
    private_key: str, auth: Authorization, *, name: str, version: str, chain_id: int, token: str
) -> bytes:
    digest = authorization_digest(
        auth, name=name, version=version, chain_id=chain_id, token=normalize_address(token)
    )
    return sign_digest(private_key, digest)


def _domain(extra: dict[str, Any] | None) -> tuple[str, str]:
    extra = extra or {}
    name, version = extra.get("name"), extra.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        raise ValueError("payment requirements lack the token's EIP-712 name/version in extra")
    return name, version


def _sign_for(
    private_key: str,
    payer: str,
    *,
    network: str,
    asset: str,
    pay_to: str,
    value: int,
    max_timeout_seconds: int,
    extra: dict[str, Any] | None,
    now: int | None,
) -> dict[str, Any]:
    name, version = _domain(extra)
    auth = build_authorization(
        payer=payer, pay_to=pay_to, value=value, max_timeout_seconds=max_timeout_seconds, now=now
    )
    sig = sign_authorization(
        private_key, auth, name=name, version=version, chain_id=chain_id_of(network), token=asset
    )
    return exact_payload(auth, sig)


def pay_v2(
    private_key: str,
    payer: str,
    requirements: PaymentRequirementsV2,
    *,
    now: int | None = None,
    resource: dict[str, Any] | None = None,
) -> PaymentPayloadV2:
    payload = _sign_for(
        private_key,
        payer,
        network=requirements.network,
        asset=requirements.asset,
        pay_to=requirements.pay_to,
        value=int(requirements.amount),
        max_timeout_seconds=requirements.max_timeout_seconds,
        extra=requirements.extra,
        now=now,
    )
    return PaymentPayloadV2.model_validate(
        {
            "x402Version": 2,
            "accepted": requirements.to_wire(),
            "payload": payload,
            **({"resource": resource} if resource else {}),
        }
    )


def pay_v1(
    private_key: str, payer: str, requirements: PaymentRequirementsV1, *, now: int | None = None
) -> PaymentPayloadV1:
    payload = _sign_for(
        private_key,
        payer,
        network=requirements.network,
        asset=requirements.asset,
        pay_to=requirements.pay_to,
        value=int(requirements.max_amount_required),
        max_timeout_seconds=requirements.max_timeout_seconds,
        extra=requirements.extra,
        now=now,
    )
    return PaymentPayloadV1(scheme=requirements.scheme, network=requirements.network, payload=payload)
