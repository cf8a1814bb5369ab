"""Builds signed x402 facilitator requests for the dev chain's USDC."""

from __future__ import annotations

import copy
import os
import time
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from client.signing import exact_payload, sign_authorization, sign_digest
from shared.devchain.chain import DevChain
from shared.evm.eip712 import Authorization, authorization_digest


def new_address() -> str:
    return str(Account.create().address)


def requirements_v2(chain: DevChain, pay_to: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {
        "scheme": "exact",
        "network": chain.network,
        "amount": str(amount),
        "asset": chain.usdc.address,
        "payTo": pay_to,
        "maxTimeoutSeconds": 300,
        "extra": {"name": chain.usdc.name, "version": chain.usdc.version, **extra},
    }


def requirements_v1(chain: DevChain, pay_to: str, amount: int) -> dict[str, Any]:
    return {
        "scheme": "exact",
        "network": "base-sepolia",
        "maxAmountRequired": str(amount),
        "asset": chain.usdc.address,
        "payTo": pay_to,
        "resource": "http://localhost/resource",
        "description": "test",
        "mimeType": "application/json",
        "maxTimeoutSeconds": 300,
        "extra": {"name": chain.usdc.name, "version": chain.usdc.version},
    }


def authorization(
    payer: str,
    pay_to: str,
    value: int,
    *,
    valid_after: int | None = None,
    valid_before: int | None = None,
    nonce: bytes | None = None,
) -> Authorization:
    now = int(time.time())
    return Authorization(
        from_=payer,
        to=pay_to,
        value=value,
        valid_after=now - 600 if valid_after is None else valid_after,
        valid_before=now + 300 if valid_before is None else valid_before,
        nonce=nonce or os.urandom(32),
    )


def sign(
    chain: DevChain, key: str, auth: Authorization, *, name: str | None = None, version: str | None = None
) -> bytes:
    return sign_authorization(
        key,
        auth,
        name=name or chain.usdc.name,
        version=version or chain.usdc.version,
        chain_id=chain.chain_id,
        token=chain.usdc.address,
    )


def digest(chain: DevChain, auth: Authorization) -> bytes:
    return authorization_digest(
        auth,
        name=chain.usdc.name,
        version=chain.usdc.version,
        chain_id=chain.chain_id,
        token=chain.usdc.address,
    )


def v2_body(requirements: dict[str, Any], auth: Authorization, signature: bytes) -> dict[str, Any]:
    accepted = copy.deepcopy(requirements)
    payload = {"x402Version": 2, "accepted": accepted, "payload": exact_payload(auth, signature)}
    return {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": requirements}


def v1_body(requirements: dict[str, Any], auth: Authorization, signature: bytes) -> dict[str, Any]:
    payload = {
        "x402Version": 1,
        "scheme": "exact",
        "network": requirements["network"],
        "payload": exact_payload(auth, signature),
    }
    return {"x402Version": 1, "paymentPayload": payload, "paymentRequirements": requirements}


def paid_request(
    chain: DevChain, payer: LocalAccount, amount: int, *, pay_to: str | None = None, version: int = 2
) -> dict[str, Any]:
    """A valid, signed request from `payer` for `amount` to a fresh payee (or `pay_to`)."""
    pay_to = pay_to or new_address()
    auth = authorization(payer.address, pay_to, amount)
    sig = sign(chain, payer.key.hex(), auth)
    if version == 1:
        return v1_body(requirements_v1(chain, pay_to, amount), auth, sig)
    return v2_body(requirements_v2(chain, pay_to, amount), auth, sig)


__all__ = ["sign_digest"]
