"""ECDSA signature parsing and recovery with the same rules as Circle's ECRecover: 65 bytes, v in
{27, 28} (0/1 accepted and normalised, as wallets emit both), s in the lower half of the curve order.
eth-account would recover high-s signatures that the token then rejects on-chain."""

from __future__ import annotations

import re
from dataclasses import dataclass

from coincurve import PublicKey

from shared.evm.hashing import checksum_address, keccak256

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2


class SignatureError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class EcdsaSignature:
    v: int  # 27 or 28
    r: int
    s: int

    def to_bytes(self) -> bytes:
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes([self.v])


def parse_ecdsa(signature: bytes) -> EcdsaSignature:
    if len(signature) != 65:
        raise SignatureError(f"ECDSA signature must be 65 bytes, got {len(signature)}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v in (0, 1):
        v += 27
    if v not in (27, 28):
        raise SignatureError(f"signature v must be 27 or 28, got {signature[64]}")
    if not 0 < r < SECP256K1_N:
        raise SignatureError("signature r is out of range")
    if not 0 < s <= SECP256K1_HALF_N:
        raise SignatureError("signature s is not in the lower half of the curve order (malleable)")
    return EcdsaSignature(v, r, s)


def recover_signer_bytes(digest: bytes, sig: EcdsaSignature) -> bytes:
    """The 20-byte address that signed `digest`: compare it with the payer's bytes, no spelling involved."""
    compact = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v - 27])
    try:
        pub = PublicKey.from_signature_and_message(compact, digest, hasher=None)
    except Exception as exc:  # coincurve raises plain Exception for unrecoverable points
        raise SignatureError("signature does not recover to a public key") from exc
    return keccak256(pub.format(compressed=False)[1:])[-20:]


def recover_signer(digest: bytes, sig: EcdsaSignature) -> str:
    """Checksummed address that signed `digest`."""
    return checksum_address(recover_signer_bytes(digest, sig))


_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


def parse_hex(value: str, *, what: str) -> bytes:
    # fullmatch, because bytes.fromhex would quietly skip embedded whitespace.
    if not isinstance(value, str) or not value.startswith("0x"):
        raise SignatureError(f"{what} must be 0x-prefixed hex")
    if _HEX.fullmatch(value) is None:
        raise SignatureError(f"{what} is not valid hex (an even number of hex digits after 0x)")
    return bytes.fromhex(value[2:])
