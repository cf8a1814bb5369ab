"""keccak-256 straight from pycryptodome: eth_utils' wrapper spends more time in its argument decorators
than in hashing, and every verify hashes four times."""

from __future__ import annotations

from Crypto.Hash import keccak as _keccak


def keccak256(data: bytes) -> bytes:
    return _keccak.new(digest_bits=256, data=data).digest()


def checksum_address(raw: bytes) -> str:
    """EIP-55 spelling of a 20-byte address."""
    hex_addr = raw.hex()
    digest = keccak256(hex_addr.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if d >= "8" else c for c, d in zip(hex_addr, digest, strict=False))
