"""Address parsing: strict 20-byte hex, checksummed on output."""

from __future__ import annotations

import re
from functools import lru_cache

from eth_utils.address import to_checksum_address

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


class InvalidAddress(ValueError):
    pass


def is_address(value: object) -> bool:
    return isinstance(value, str) and _ADDRESS.fullmatch(value) is not None


@lru_cache(maxsize=65536)
def normalize_address(value: str) -> str:
    """Checksummed form of a hex address. Mixed-case input is not checksum-validated: x402 clients
    lowercase freely, and the signature binds the bytes, not the spelling."""
    if not is_address(value):
        raise InvalidAddress(f"not a 20-byte hex address: {value!r}")
    return str(to_checksum_address(value))


def address_bytes(value: str) -> bytes:
    if not is_address(value):
        raise InvalidAddress(f"not a 20-byte hex address: {value!r}")
    return bytes.fromhex(value[2:])
