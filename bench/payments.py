"""Pre-generated, distinct, signed x402 `exact` payments (EIP-3009) as ready-to-send request bodies.

Every payment has its own random 32-byte EIP-3009 nonce; payers are a fixed set of fresh accounts holding
minted USDC (EIP-3009 payers need no ETH), payees are fresh addresses chosen per benchmark cell so that
the cell's on-chain effect can be checked by summing the payees' balances.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import orjson
from coincurve import PrivateKey
from eth_account import Account

from client.signing import exact_payload
from shared.evm.address import normalize_address
from shared.evm.eip712 import Authorization, authorization_digest

V1_NETWORK_NAMES = {84532: "base-sepolia", 8453: "base"}


@dataclass(frozen=True)
class TokenInfo:
    address: str
    name: str
    version: str
    chain_id: int

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"


@dataclass(frozen=True)
class Payer:
    address: str
    key: PrivateKey


@dataclass(frozen=True)
class Payment:
    body: bytes  # the JSON request body for /verify and /settle
    payer: str
    pay_to: str
    amount: int
    nonce: bytes


def new_addresses(n: int) -> list[str]:
    return [str(Account.create().address) for _ in range(n)]


def make_payer(private_key_hex: str) -> Payer:
    key = PrivateKey(bytes.fromhex(private_key_hex.removeprefix("0x")))
    return Payer(str(Account.from_key(private_key_hex).address), key)


def _requirements(
    token: TokenInfo, pay_to: str, amount: int, version: int, timeout: int
) -> dict[str, object]:
    extra = {"name": token.name, "version": token.version}
    if version == 1:
        return {
            "scheme": "exact",
            "network": V1_NETWORK_NAMES[token.chain_id],
            "maxAmountRequired": str(amount),
            "asset": token.address,
            "payTo": pay_to,
            "resource": "http://127.0.0.1/bench",
            "description": "facilitator benchmark",
            "mimeType": "application/json",
            "maxTimeoutSeconds": timeout,
            "extra": extra,
        }
    return {
        "scheme": "exact",
        "network": token.network,
        "amount": str(amount),
        "asset": token.address,
        "payTo": pay_to,
        "maxTimeoutSeconds": timeout,
        "extra": extra,
    }


def make_payments(
    token: TokenInfo,
    payers: list[Payer],
    payees: list[str],
    count: int,
    *,
    base_amount: int = 1000,
    version: int = 2,
    valid_for: int = 3600,
    offset: int = 0,
) -> list[Payment]:
    """`count` distinct signed payments; amounts vary (base_amount + i % 97) so sums are meaningful.

    validBefore is now + `valid_for`, so payments made before a long run are still settleable late in it.
    """
    now = int(time.time())
    out: list[Payment] = []
    payees = [normalize_address(p) for p in payees]
    for i in range(count):
        payer = payers[(offset + i) % len(payers)]
        pay_to = payees[(offset + i) % len(payees)]
        amount = base_amount + (offset + i) % 97
        auth = Authorization(
            from_=payer.address,
            to=pay_to,
            value=amount,
            valid_after=now - 600,
            valid_before=now + valid_for,
            nonce=os.urandom(32),
        )
        digest = authorization_digest(
            auth, name=token.name, version=token.version, chain_id=token.chain_id, token=token.address
        )
        raw = payer.key.sign_recoverable(digest, hasher=None)
        signature = raw[:64] + bytes([raw[64] + 27])
        requirements = _requirements(token, pay_to, amount, version, valid_for)
        if version == 1:
            payload: dict[str, object] = {
                "x402Version": 1,
                "scheme": "exact",
                "network": requirements["network"],
                "payload": exact_payload(auth, signature),
            }
        else:
            payload = {"x402Version": 2, "accepted": requirements, "payload": exact_payload(auth, signature)}
        body = orjson.dumps(
            {"x402Version": version, "paymentPayload": payload, "paymentRequirements": requirements}
        )
        out.append(Payment(body, payer.address, pay_to, amount, auth.nonce))
    return out
