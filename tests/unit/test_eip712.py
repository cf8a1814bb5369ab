"""EIP-712 hashing of EIP-3009 TransferWithAuthorization (shared/evm/eip712.py) against published domain
separators, computed vectors and eth_account's generic typed-data encoder."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.evm.eip712 import (
    DOMAIN_TYPEHASH,
    TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
    Authorization,
    authorization_digest,
    authorization_struct_hash,
    domain_separator,
    typed_data_digest,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "eip3009.json").read_text())
NETWORKS = ["base-sepolia", "base"]

# Published on-chain DOMAIN_SEPARATOR() of USDC (FiatToken v2.2) on Base and Base Sepolia.
KNOWN_DOMAIN_SEPARATORS = {
    (8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "USD Coin"): (
        "02fa7265e7c5d81118673727957699e4d68f74cd74b7db77da710fe8a2c7834f"
    ),
    (84532, "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC"): (
        "71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818"
    ),
}

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


def test_typehashes_match_the_eip3009_and_eip712_definitions() -> None:
    vec = VECTORS["base-sepolia"]
    assert h(vec["eip712DomainTypehash"]) == DOMAIN_TYPEHASH
    assert h(vec["transferWithAuthorizationTypehash"]) == TRANSFER_WITH_AUTHORIZATION_TYPEHASH


@pytest.mark.parametrize(("key", "expected"), KNOWN_DOMAIN_SEPARATORS.items())
def test_usdc_domain_separators_on_base_and_base_sepolia(key: tuple[int, str, str], expected: str) -> None:
    chain_id, token, name = key
    assert domain_separator(name, "2", chain_id, token).hex() == expected


@pytest.mark.parametrize("network", NETWORKS)
def test_domain_separator_equals_vector(network: str) -> None:
    d = VECTORS[network]["domain"]
    sep = domain_separator(d["name"], d["version"], d["chainId"], d["verifyingContract"])
    assert sep == h(VECTORS[network]["domainSeparator"])


@pytest.mark.parametrize("network", NETWORKS)
def test_domain_separator_ignores_address_spelling(network: str) -> None:
    # Clients send lowercase addresses freely; the domain binds the 20 bytes, not the checksum.
    d = VECTORS[network]["domain"]
    lower = domain_separator(d["name"], d["version"], d["chainId"], d["verifyingContract"].lower())
    assert lower == h(VECTORS[network]["domainSeparator"])


@pytest.mark.parametrize("network", NETWORKS)
def test_struct_hash_and_digest_equal_vector(network: str) -> None:
    vec = VECTORS[network]
    auth = authorization_of(vec["authorization"])
    struct_hash = authorization_struct_hash(auth)
    assert struct_hash == h(vec["structHash"])
    assert typed_data_digest(h(vec["domainSeparator"]), struct_hash) == h(vec["digest"])
    d = vec["domain"]
    digest = authorization_digest(
        auth, name=d["name"], version=d["version"], chain_id=d["chainId"], token=d["verifyingContract"]
    )
    assert digest == h(vec["digest"])


@pytest.mark.parametrize("network", NETWORKS)
def test_the_other_usdc_name_gives_the_wrong_domain_digest(network: str) -> None:
    """'USDC' vs 'USD Coin' is the classic pitfall: the digest must change with the name."""
    vec = VECTORS[network]
    d = vec["domain"]
    digest = authorization_digest(
        authorization_of(vec["authorization"]),
        name=vec["negative_wrongDomainName"],
        version=d["version"],
        chain_id=d["chainId"],
        token=d["verifyingContract"],
    )
    assert digest == h(vec["negative_wrongDomainName_digest"])
    assert digest != h(vec["digest"])


def test_every_authorization_field_is_bound_by_the_struct_hash() -> None:
    base = authorization_of(VECTORS["base-sepolia"]["authorization"])
    variants = [
        Authorization(base.to, base.to, base.value, base.valid_after, base.valid_before, base.nonce),
        Authorization(base.from_, base.from_, base.value, base.valid_after, base.valid_before, base.nonce),
        Authorization(base.from_, base.to, base.value + 1, base.valid_after, base.valid_before, base.nonce),
        Authorization(base.from_, base.to, base.value, base.valid_after + 1, base.valid_before, base.nonce),
        Authorization(base.from_, base.to, base.value, base.valid_after, base.valid_before + 1, base.nonce),
        Authorization(base.from_, base.to, base.value, base.valid_after, base.valid_before, bytes(32)),
    ]
    hashes = {authorization_struct_hash(a) for a in [base, *variants]}
    assert len(hashes) == len(variants) + 1


def _random_address(rng: random.Random) -> str:
    raw = "0x" + rng.randbytes(20).hex()
    return str(to_checksum_address(raw)) if rng.random() < 0.5 else raw


def _random_uint(rng: random.Random) -> int:
    return rng.choice([0, 1, 2**256 - 1, 2**64, rng.getrandbits(rng.choice([8, 32, 64, 128, 256]))])


def _random_text(rng: random.Random) -> str:
    return rng.choice(["USDC", "USD Coin", "", "USD₮0", "Mezo USD", "x" * 80, rng.randbytes(6).hex()])


def test_matches_eth_account_typed_data_encoder_for_random_authorizations() -> None:
    rng = random.Random(402)
    for case in range(50):
        name, version = _random_text(rng), rng.choice(["1", "2", "10", _random_text(rng)])
        chain_id = rng.choice([1, 8453, 84532, 2**32 + 7, rng.getrandbits(64)])
        token = _random_address(rng)
        auth = Authorization(
            from_=_random_address(rng),
            to=_random_address(rng),
            value=_random_uint(rng),
            valid_after=_random_uint(rng),
            valid_before=_random_uint(rng),
            nonce=rng.randbytes(32),
        )
        signable = encode_typed_data(
            domain_data={"name": name, "version": version, "chainId": chain_id, "verifyingContract": token},
            message_types=EIP3009_TYPES,
            message_data={
                "from": auth.from_,
                "to": auth.to,
                "value": auth.value,
                "validAfter": auth.valid_after,
                "validBefore": auth.valid_before,
                "nonce": auth.nonce,
            },
        )
        expected_digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
        context = f"case {case}: {name!r} {version!r} {chain_id} {token} {auth}"
        assert domain_separator(name, version, chain_id, token) == signable.header, context
        assert authorization_struct_hash(auth) == signable.body, context
        digest = authorization_digest(auth, name=name, version=version, chain_id=chain_id, token=token)
        assert digest == expected_digest, context
