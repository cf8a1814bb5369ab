"""EIP-712 hashing for EIP-3009 `TransferWithAuthorization`, done directly (no generic typed-data engine):
this runs on every verify, and the direct form is ~6x faster than eth-account's encoder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from eth_abi.abi import encode

from shared.evm.hashing import keccak256

DOMAIN_TYPEHASH = keccak256(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
    b"TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
    b"uint256 validBefore,bytes32 nonce)"
)


@dataclass(frozen=True, slots=True)
class Authorization:
    """An EIP-3009 authorization with parsed fields."""

    from_: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes  # 32 bytes


@lru_cache(maxsize=256)
def domain_separator(name: str, version: str, chain_id: int, verifying_contract: str) -> bytes:
    return keccak256(
        DOMAIN_TYPEHASH
        + keccak256(name.encode())
        + keccak256(version.encode())
        + chain_id.to_bytes(32, "big")
        + bytes(12)
        + bytes.fromhex(verifying_contract[2:])
    )


def authorization_struct_hash(auth: Authorization) -> bytes:
    return keccak256(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH
        + bytes(12)
        + bytes.fromhex(auth.from_[2:])
        + bytes(12)
        + bytes.fromhex(auth.to[2:])
        + auth.value.to_bytes(32, "big")
        + auth.valid_after.to_bytes(32, "big")
        + auth.valid_before.to_bytes(32, "big")
        + auth.nonce
    )


def typed_data_digest(domain_sep: bytes, struct_hash: bytes) -> bytes:
    return keccak256(b"\x19\x01" + domain_sep + struct_hash)


def authorization_digest(auth: Authorization, *, name: str, version: str, chain_id: int, token: str) -> bytes:
    return typed_data_digest(
        domain_separator(name, version, chain_id, token), authorization_struct_hash(auth)
    )


def encode_uint(value: int) -> bytes:
    return encode(["uint256"], [value])
