"""The facilitator's signer keys and EIP-1559 transaction signing."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

from coincurve import PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import Hash32

from .ledger import SignedTransaction
from .tx_signing import sign_eip1559_call


@dataclass(frozen=True, slots=True)
class FeeQuote:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


class Signer:
    def __init__(self, private_key: str) -> None:
        self._account: LocalAccount = Account.from_key(private_key)
        self._key = PrivateKey(bytes(self._account.key))
        self.address: str = self._account.address

    def __repr__(self) -> str:  # never print the key
        return f"Signer({self.address})"

    def sign_call(
        self, *, chain_id: int, nonce: int, to: str, data: bytes, gas: int, fees: FeeQuote
    ) -> SignedTransaction:
        raw, tx_hash = sign_eip1559_call(
            self._key,
            chain_id=chain_id,
            nonce=nonce,
            max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
            max_fee_per_gas=fees.max_fee_per_gas,
            gas=gas,
            to=to,
            data=data,
        )
        return SignedTransaction(
            tx_hash="0x" + tx_hash.hex(), raw_tx=raw, nonce=nonce, max_fee_per_gas=fees.max_fee_per_gas
        )

    def sign_message_hash(self, digest: bytes) -> bytes:
        signed = self._account.unsafe_sign_hash(Hash32(digest))
        return bytes(signed.signature)


class SignerPool:
    """Spreads settlements over keys: the one with the fewest transactions in flight goes next, so one
    stuck key does not hold up the rest."""

    def __init__(self, signers: list[Signer]) -> None:
        if not signers:
            raise ValueError("a network needs at least one signer key")
        self.signers = signers
        self._in_flight: Counter[str] = Counter()
        self._rr = itertools.count()

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.signers]

    def by_address(self, address: str) -> Signer | None:
        return next((s for s in self.signers if s.address.lower() == address.lower()), None)

    def pick(self, avoid: set[str] | None = None) -> Signer:
        candidates = [s for s in self.signers if s.address not in (avoid or set())] or self.signers
        start = next(self._rr)
        rotated = candidates[start % len(candidates) :] + candidates[: start % len(candidates)]
        return min(rotated, key=lambda s: self._in_flight[s.address])

    def acquire(self, signer: Signer) -> None:
        self._in_flight[signer.address] += 1

    def release(self, signer: Signer) -> None:
        self._in_flight[signer.address] -= 1

    def in_flight(self, address: str) -> int:
        return self._in_flight[address]
