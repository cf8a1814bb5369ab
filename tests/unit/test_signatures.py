"""ECDSA parsing/recovery with FiatToken's ECRecover rules (shared/evm/signatures.py) and ERC-6492 wrappers
(shared/evm/erc6492.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from shared.evm import erc6492
from shared.evm.eip712 import Authorization, authorization_digest
from shared.evm.signatures import (
    SECP256K1_HALF_N,
    SECP256K1_N,
    SignatureError,
    parse_ecdsa,
    parse_hex,
    recover_signer,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "eip3009.json").read_text())
NETWORKS = ["base-sepolia", "base"]
SPEC_SIGNER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"
SECP256K1_P = 2**256 - 2**32 - 977

EIP3009_TYPES = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


def h(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def authorization_of(wire: dict[str, str]) -> Authorization:
    return Authorization(
        from_=wire["from"],
        to=wire["to"],
        value=int(wire["value"]),
        valid_after=int(wire["validAfter"]),
        valid_before=int(wire["validBefore"]),
        nonce=h(wire["nonce"]),
    )


def digest_under(network: str, auth: Authorization, *, name: str | None = None) -> bytes:
    d = VECTORS[network]["domain"]
    return authorization_digest(
        auth,
        name=d["name"] if name is None else name,
        version=d["version"],
        chain_id=d["chainId"],
        token=d["verifyingContract"],
    )


def with_v(signature: bytes, v: int) -> bytes:
    return signature[:64] + bytes([v])


# --- parse_ecdsa / recover_signer ---------------------------------------------------------------------


@pytest.mark.parametrize("network", NETWORKS)
def test_vector_signature_parses_and_recovers_the_signer(network: str) -> None:
    vec = VECTORS[network]
    sig = parse_ecdsa(h(vec["signature"]))
    assert (sig.v, sig.r, sig.s) == (vec["v"], int(vec["r"], 16), int(vec["s"], 16))
    assert sig.to_bytes() == h(vec["signature"])
    assert recover_signer(h(vec["digest"]), sig) == vec["signerAddress"]


@pytest.mark.parametrize("network", NETWORKS)
def test_recovery_under_the_wrong_domain_name_gives_another_address(network: str) -> None:
    vec = VECTORS[network]
    auth = authorization_of(vec["authorization"])
    wrong = digest_under(network, auth, name=vec["negative_wrongDomainName"])
    recovered = recover_signer(wrong, parse_ecdsa(h(vec["signature"])))
    assert recovered == vec["negative_wrongDomainName_recoveredAddress"]
    assert recovered != vec["signerAddress"]


@pytest.mark.parametrize("network", NETWORKS)
def test_high_s_signature_is_refused_although_eth_account_recovers_it(network: str) -> None:
    vec = VECTORS[network]
    high_s = h(vec["negative_highS_signature"])
    assert int.from_bytes(high_s[32:64], "big") > SECP256K1_HALF_N
    # eth_account happily recovers the malleated signature ...
    a = vec["authorization"]
    signable = encode_typed_data(
        domain_data=vec["domain"],
        message_types=EIP3009_TYPES,
        message_data={
            "from": a["from"],
            "to": a["to"],
            "value": int(a["value"]),
            "validAfter": int(a["validAfter"]),
            "validBefore": int(a["validBefore"]),
            "nonce": h(a["nonce"]),
        },
    )
    assert Account.recover_message(signable, signature=high_s) == vec["signerAddress"]
    assert vec["negative_highS_ethAccountRecover"] == vec["signerAddress"]
    # ... but FiatToken's ECRecover reverts on it, so verification must refuse it too.
    with pytest.raises(SignatureError, match="lower half"):
        parse_ecdsa(high_s)


@pytest.mark.parametrize("network", NETWORKS)
def test_v_0_and_1_are_normalised_to_27_and_28(network: str) -> None:
    vec = VECTORS[network]
    original = h(vec["signature"])
    sig = parse_ecdsa(with_v(original, vec["v"] - 27))
    assert sig.v == vec["v"]
    assert sig.to_bytes() == original  # what goes on-chain carries 27/28
    assert recover_signer(h(vec["digest"]), sig) == vec["signerAddress"]


@pytest.mark.parametrize("v", [2, 26, 29, 30, 35, 36, 255])
def test_v_outside_0_1_27_28_is_refused(v: int) -> None:
    with pytest.raises(SignatureError, match="v must be 27 or 28"):
        parse_ecdsa(with_v(h(VECTORS["base"]["signature"]), v))


@pytest.mark.parametrize("length", [0, 1, 64, 66, 130])
def test_wrong_length_is_refused(length: int) -> None:
    signature = (h(VECTORS["base"]["signature"]) * 3)[:length]
    with pytest.raises(SignatureError, match="65 bytes"):
        parse_ecdsa(signature)


@pytest.mark.parametrize(
    ("r", "s", "match"),
    [
        (0, 1, "r is out of range"),
        (SECP256K1_N, 1, "r is out of range"),
        (2**256 - 1, 1, "r is out of range"),
        (1, 0, "lower half"),
        (1, SECP256K1_HALF_N + 1, "lower half"),
    ],
)
def test_r_and_s_ranges_are_enforced(r: int, s: int, match: str) -> None:
    with pytest.raises(SignatureError, match=match):
        parse_ecdsa(r.to_bytes(32, "big") + s.to_bytes(32, "big") + b"\x1b")


def test_s_exactly_half_n_is_accepted() -> None:
    sig = parse_ecdsa((1).to_bytes(32, "big") + SECP256K1_HALF_N.to_bytes(32, "big") + b"\x1c")
    assert (sig.r, sig.s, sig.v) == (1, SECP256K1_HALF_N, 28)


def test_r_that_is_not_a_curve_x_coordinate_fails_recovery_with_signature_error() -> None:
    # x^3 + 7 must be a square mod p for r to be the x of a curve point; pick the first r where it is not.
    r = next(x for x in range(1, 100) if pow(x**3 + 7, (SECP256K1_P - 1) // 2, SECP256K1_P) != 1)
    sig = parse_ecdsa(r.to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x1b")
    with pytest.raises(SignatureError, match="does not recover"):
        recover_signer(bytes(32), sig)


def test_recovery_agrees_with_eth_account_for_fresh_keys() -> None:
    rng = random.Random(6492)
    domain = VECTORS["base-sepolia"]["domain"]
    for _ in range(5):
        account = Account.from_key(rng.randbytes(32))
        message = {
            "from": account.address,
            "to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
            "value": rng.getrandbits(64),
            "validAfter": 0,
            "validBefore": 2**40,
            "nonce": rng.randbytes(32),
        }
        signed = account.sign_message(
            encode_typed_data(domain_data=domain, message_types=EIP3009_TYPES, message_data=message)
        )
        auth = Authorization(
            account.address,
            message["to"],
            message["value"],
            message["validAfter"],
            message["validBefore"],
            message["nonce"],
        )
        digest = digest_under("base-sepolia", auth)
        assert digest == bytes(signed.message_hash)
        assert recover_signer(digest, parse_ecdsa(bytes(signed.signature))) == account.address


# --- the signature used in every spec example ----------------------------------------------------------


def test_spec_example_signature_is_by_its_payer_under_the_base_sepolia_domain() -> None:
    example = VECTORS["specExample"]
    auth = authorization_of(example["authorization"])
    sig = parse_ecdsa(h(example["signature"]))
    assert recover_signer(digest_under("base-sepolia", auth), sig) == SPEC_SIGNER


def test_spec_example_signature_is_not_by_its_payer_under_the_base_mainnet_domain() -> None:
    example = VECTORS["specExample"]
    auth = authorization_of(example["authorization"])
    recovered = recover_signer(digest_under("base", auth), parse_ecdsa(h(example["signature"])))
    assert recovered != SPEC_SIGNER
    assert recovered == "0x34aE57701723c302054fe521aC33679a9a94fe42"


# --- parse_hex -------------------------------------------------------------------------------------------


def test_parse_hex_reads_0x_hex() -> None:
    assert parse_hex("0xdeadBEEF", what="x") == b"\xde\xad\xbe\xef"
    assert parse_hex("0x", what="x") == b""


@pytest.mark.parametrize(
    ("value", "match"),
    [("deadbeef", "nonce must be 0x-prefixed"), ("0xabc", "not valid hex"), ("0xzz", "not valid hex")],
)
def test_parse_hex_refuses_malformed_values(value: str, match: str) -> None:
    with pytest.raises(SignatureError, match=match):
        parse_hex(value, what="nonce")


def test_parse_hex_refuses_non_strings() -> None:
    with pytest.raises(SignatureError):
        parse_hex(1234, what="nonce")  # type: ignore[arg-type]


# --- ERC-6492 --------------------------------------------------------------------------------------------


def test_synthetic_erc6492_vector_unwraps_to_factory_calldata_and_inner() -> None:
    vec = VECTORS["erc6492_synthetic"]
    wrapped = h(vec["wrappedSignature"])
    assert h(vec["magicSuffix"]) == erc6492.MAGIC_SUFFIX
    assert erc6492.is_erc6492(wrapped)
    unwrapped = erc6492.unwrap(wrapped)
    assert unwrapped.factory == "0x0000000000000000000000000000000000001234"
    assert unwrapped.factory_calldata == h(vec["factoryCalldata"])
    assert unwrapped.inner == h(vec["innerSignature"])
    # The inner signature is the real Base Sepolia vector signature.
    assert (
        recover_signer(h(VECTORS["base-sepolia"]["digest"]), parse_ecdsa(unwrapped.inner))
        == VECTORS["base-sepolia"]["signerAddress"]
    )


def test_wrap_reproduces_the_synthetic_vector_bytes() -> None:
    vec = VECTORS["erc6492_synthetic"]
    wrapped = erc6492.wrap(vec["factory"], h(vec["factoryCalldata"]), h(vec["innerSignature"]))
    assert wrapped == h(vec["wrappedSignature"])


def test_wrap_unwrap_round_trip() -> None:
    rng = random.Random(1271)
    for _ in range(10):
        factory = Account.from_key(rng.randbytes(32)).address
        calldata = rng.randbytes(rng.randrange(0, 300))
        inner = rng.randbytes(rng.choice([0, 65, 200]))
        out = erc6492.unwrap(erc6492.wrap(factory, calldata, inner))
        assert (out.factory, out.factory_calldata, out.inner) == (factory, calldata, inner)


@pytest.mark.parametrize(
    "signature",
    [
        bytes(65),
        h(VECTORS["base"]["signature"]),
        bytes.fromhex("6492" * 16),  # the suffix alone carries no wrapper
        h(VECTORS["erc6492_synthetic"]["wrappedSignature"])[:-1],
    ],
)
def test_is_erc6492_is_false_without_the_magic_suffix_and_a_body(signature: bytes) -> None:
    assert not erc6492.is_erc6492(signature)


@pytest.mark.parametrize("body", [b"", b"\x01" * 31, b"\xff" * 96, bytes(64) + (2**255).to_bytes(32, "big")])
def test_unwrap_of_garbage_raises_erc6492_error(body: bytes) -> None:
    with pytest.raises(erc6492.Erc6492Error):
        erc6492.unwrap(body + erc6492.MAGIC_SUFFIX)
