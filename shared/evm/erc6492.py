"""ERC-6492 signature wrappers: abi.encode(factory, factoryCalldata, innerSignature) ++ magic suffix."""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address

MAGIC_SUFFIX = bytes.fromhex("6492" * 16)


@dataclass(frozen=True, slots=True)
class Erc6492Signature:
    factory: str
    factory_calldata: bytes
    inner: bytes


class Erc6492Error(ValueError):
    pass


def is_erc6492(signature: bytes) -> bool:
    return len(signature) > 32 and signature.endswith(MAGIC_SUFFIX)


def unwrap(signature: bytes) -> Erc6492Signature:
    try:
        factory, calldata, inner = decode(["address", "bytes", "bytes"], signature[: -len(MAGIC_SUFFIX)])
    except (DecodingError, ValueError, OverflowError) as exc:
        raise Erc6492Error("malformed ERC-6492 wrapper") from exc
    return Erc6492Signature(str(to_checksum_address(factory)), bytes(calldata), bytes(inner))


def wrap(factory: str, factory_calldata: bytes, inner: bytes) -> bytes:
    return encode(["address", "bytes", "bytes"], [factory, factory_calldata, inner]) + MAGIC_SUFFIX
