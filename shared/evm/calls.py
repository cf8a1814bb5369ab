"""ABI encoding of the few contract calls the stack makes (FiatToken EIP-3009, ERC-20 reads, ERC-1271,
Multicall3), precomputed selectors and hand-packed where that is on the hot path."""

from __future__ import annotations

from eth_abi.abi import decode, encode

from shared.evm.eip712 import Authorization
from shared.evm.hashing import keccak256
from shared.evm.signatures import EcdsaSignature


def selector(signature: str) -> bytes:
    return keccak256(signature.encode())[:4]


TRANSFER_WITH_AUTHORIZATION_VRS = selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)
TRANSFER_WITH_AUTHORIZATION_BYTES = selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
)
AUTHORIZATION_STATE = selector("authorizationState(address,bytes32)")
BALANCE_OF = selector("balanceOf(address)")
NAME = selector("name()")
VERSION = selector("version()")
IS_VALID_SIGNATURE = selector("isValidSignature(bytes32,bytes)")
ERC1271_MAGIC = bytes.fromhex("1626ba7e")
TRY_AGGREGATE = selector("tryAggregate(bool,(address,bytes)[])")

# Event topics checked in settlement receipts.
TRANSFER_TOPIC = keccak256(b"Transfer(address,address,uint256)")
AUTHORIZATION_USED_TOPIC = keccak256(b"AuthorizationUsed(address,bytes32)")

MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"


def _word_address(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def _auth_words(auth: Authorization) -> bytes:
    return (
        _word_address(auth.from_)
        + _word_address(auth.to)
        + auth.value.to_bytes(32, "big")
        + auth.valid_after.to_bytes(32, "big")
        + auth.valid_before.to_bytes(32, "big")
        + auth.nonce
    )


def transfer_with_authorization_vrs(auth: Authorization, sig: EcdsaSignature) -> bytes:
    return (
        TRANSFER_WITH_AUTHORIZATION_VRS
        + _auth_words(auth)
        + sig.v.to_bytes(32, "big")
        + sig.r.to_bytes(32, "big")
        + sig.s.to_bytes(32, "big")
    )


def transfer_with_authorization_bytes(auth: Authorization, signature: bytes) -> bytes:
    """The ERC-7598 overload: FiatToken v2.2 checks it through SignatureChecker (ERC-1271 for contracts)."""
    return TRANSFER_WITH_AUTHORIZATION_BYTES + encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
        [auth.from_, auth.to, auth.value, auth.valid_after, auth.valid_before, auth.nonce, signature],
    )


def authorization_state(authorizer: str, nonce: bytes) -> bytes:
    return AUTHORIZATION_STATE + _word_address(authorizer) + nonce


def balance_of(account: str) -> bytes:
    return BALANCE_OF + _word_address(account)


def is_valid_signature(digest: bytes, signature: bytes) -> bytes:
    return IS_VALID_SIGNATURE + encode(["bytes32", "bytes"], [digest, signature])


_TRY_AGGREGATE_ARGS = ["bool", "(address,bytes)[]"]


def try_aggregate(calls: list[tuple[str, bytes]], *, require_success: bool = False) -> bytes:
    return TRY_AGGREGATE + encode(_TRY_AGGREGATE_ARGS, [require_success, calls])


def decode_try_aggregate_input(data: bytes) -> list[tuple[str, bytes]] | None:
    """The (target, calldata) calls of a `tryAggregate` call's input; None for any other input."""
    if data[:4] != TRY_AGGREGATE:
        return None
    try:
        _, inner = decode(_TRY_AGGREGATE_ARGS, data[4:])
    except Exception:
        return None
    return [(str(target), bytes(calldata)) for target, calldata in inner]


def decode_try_aggregate(data: bytes) -> list[tuple[bool, bytes]]:
    (results,) = decode(["(bool,bytes)[]"], data)
    return [(bool(ok), bytes(ret)) for ok, ret in results]


def decode_uint(data: bytes) -> int:
    return int.from_bytes(data[:32], "big") if len(data) >= 32 else 0


def decode_bool(data: bytes) -> bool:
    return decode_uint(data) != 0


def decode_string(data: bytes) -> str:
    (value,) = decode(["string"], data)
    return str(value)


def decode_revert_reason(data: bytes) -> str | None:
    """Text of an `Error(string)` revert, the form FiatToken uses."""
    if data[:4] == bytes.fromhex("08c379a0"):
        try:
            return decode_string(data[4:])
        except Exception:
            return None
    return None
