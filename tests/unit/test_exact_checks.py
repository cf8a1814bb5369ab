"""Request parsing (facilitator/wire.py, exact_evm/payment.py), the chain-free checks (exact_evm/checks.py)
and the signature plan (exact_evm/signature_check.py) for exact/EVM EIP-3009 payments.

Requests are the spec's v2 and v1 /verify examples with their "0x..." placeholders replaced by a real
EIP-712 signature from a fresh key over the Base Sepolia USDC domain."""

from __future__ import annotations

import copy
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak

from facilitator.exact_evm.checks import run_static_checks
from facilitator.exact_evm.payment import ExactPayment, Rejected
from facilitator.exact_evm.signature_check import (
    SignatureKind,
    plan_for_counterfactual,
    plan_for_eoa,
)
from facilitator.wire import BadRequest, network_hint, parse_request
from shared.evm import erc6492
from shared.evm.eip712 import authorization_digest
from shared.evm.signatures import SECP256K1_N
from shared.tokens import BUILTIN_TOKENS, Token, TokenRegistry
from shared.x402 import reasons

EXAMPLES: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "x402_examples.json").read_text())[
    "examples"
]

PAYER = Account.from_key(keccak(text="x402-stack unit tests: exact checks payer"))
OTHER = Account.from_key(keccak(text="x402-stack unit tests: somebody else"))
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
USDC_BASE_SEPOLIA = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
USDC_BASE = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
NONCE = "0x" + keccak(text="x402-stack unit tests: nonce").hex()
SEPOLIA_DOMAIN = {"name": "USDC", "version": "2", "chainId": 84532, "verifyingContract": USDC_BASE_SEPOLIA}
BASE_DOMAIN = {"name": "USD Coin", "version": "2", "chainId": 8453, "verifyingContract": USDC_BASE}
# The examples' window is validAfter 1740672089 .. validBefore 1740672154; the clock stands inside it.
VALID_AFTER, VALID_BEFORE = 1740672089, 1740672154
NOW = 1740672100
REGISTRY = TokenRegistry(BUILTIN_TOKENS)
SERVED = {8453, 84532}
FACTORY = Account.from_key(keccak(text="x402-stack unit tests: wallet factory")).address

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

DELETE = object()
P, R = "paymentPayload", "paymentRequirements"
A = "paymentPayload.accepted"
AU = "paymentPayload.payload.authorization"
SIG = "paymentPayload.payload.signature"


def sign(authorization: dict[str, str], key: Any = PAYER, domain: dict[str, Any] = SEPOLIA_DOMAIN) -> str:
    message = {
        "from": authorization["from"],
        "to": authorization["to"],
        "value": int(authorization["value"]),
        "validAfter": int(authorization["validAfter"]),
        "validBefore": int(authorization["validBefore"]),
        "nonce": bytes.fromhex(authorization["nonce"][2:]),
    }
    signable = encode_typed_data(domain_data=domain, message_types=EIP3009_TYPES, message_data=message)
    return "0x" + bytes(key.sign_message(signable).signature).hex()


def _fill(example: str) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(EXAMPLES[example])
    auth = body[P]["payload"]["authorization"]
    assert (auth["from"], auth["to"], auth["nonce"], body[P]["payload"]["signature"]) == ("0x...",) * 4
    auth.update({"from": PAYER.address, "to": PAY_TO, "nonce": NONCE})
    body[P]["payload"]["signature"] = sign(auth)
    return body


BASE_BODIES = {2: _fill("v2-verify-request"), 1: _fill("v1-verify-request")}


def body_for(version: int, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    body = copy.deepcopy(BASE_BODIES[version])
    for path, value in (changes or {}).items():
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return body


def static(
    body: dict[str, Any],
    *,
    now: int = NOW,
    registry: TokenRegistry = REGISTRY,
    served: Collection[int] = SERVED,
    allowlist: Collection[str] = (),
    margin: int = 6,
) -> Token:
    return run_static_checks(
        parse_request(body),
        registry=registry,
        served_chains=served,
        pay_to_allowlist=allowlist,
        now=now,
        valid_before_margin=margin,
    )


def rejection(body: dict[str, Any], **kwargs: Any) -> Rejected:
    with pytest.raises(Rejected) as info:
        static(body, **kwargs)
    return info.value


def digest_of(payment: ExactPayment, domain: dict[str, Any] = SEPOLIA_DOMAIN) -> bytes:
    return authorization_digest(
        payment.authorization,
        name=domain["name"],
        version=domain["version"],
        chain_id=domain["chainId"],
        token=domain["verifyingContract"],
    )


# --- the happy path ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 1])
def test_example_request_with_real_signature_passes_static_checks(version: int) -> None:
    token = static(body_for(version))
    assert token == Token(84532, USDC_BASE_SEPOLIA, "USDC", "2", 6)


@pytest.mark.parametrize(("version", "network"), [(2, "eip155:84532"), (1, "base-sepolia")])
def test_parsed_payment_normalises_both_versions(version: int, network: str) -> None:
    payment = parse_request(body_for(version))
    assert payment.x402_version == version
    assert payment.scheme == "exact"
    assert payment.network == network  # echoed back to the client as it sent it
    assert payment.payer == PAYER.address
    assert payment.requirements.amount == 10000  # v2 amount / v1 maxAmountRequired
    assert payment.requirements.pay_to == PAY_TO
    assert payment.requirements.extra == {"name": "USDC", "version": "2"}
    auth = payment.authorization
    assert (auth.value, auth.valid_after, auth.valid_before) == (10000, VALID_AFTER, VALID_BEFORE)
    assert auth.nonce == bytes.fromhex(NONCE[2:])
    assert payment.signature == bytes.fromhex(BASE_BODIES[version][P]["payload"]["signature"][2:])


def test_lowercase_addresses_are_accepted_and_checksummed() -> None:
    body = body_for(
        2,
        {
            f"{AU}.from": PAYER.address.lower(),
            f"{AU}.to": PAY_TO.lower(),
            f"{R}.asset": USDC_BASE_SEPOLIA.lower(),
        },
    )
    payment = parse_request(body)
    assert payment.payer == PAYER.address
    assert payment.authorization.to == PAY_TO
    assert static(body).address == USDC_BASE_SEPOLIA


def test_top_level_version_is_ignored_and_payload_version_routes() -> None:
    body = body_for(2, {"x402Version": 1})
    assert parse_request(body).x402_version == 2


# --- static rejections ------------------------------------------------------------------------------------

STATIC_REJECTIONS: list[tuple[str, int, dict[str, Any], str]] = [
    ("v2 accepted scheme", 2, {f"{A}.scheme": "upto"}, reasons.SCHEME_MISMATCH),
    ("v2 requirements scheme", 2, {f"{R}.scheme": "upto"}, reasons.SCHEME_MISMATCH),
    ("v1 payload scheme", 1, {f"{P}.scheme": "upto"}, reasons.SCHEME_MISMATCH),
    ("v1 requirements scheme", 1, {f"{R}.scheme": "Exact"}, reasons.SCHEME_MISMATCH),
    ("v2 network mismatch", 2, {f"{A}.network": "eip155:8453"}, reasons.NETWORK_MISMATCH),
    ("v2 requirements network", 2, {f"{R}.network": "eip155:8453"}, reasons.NETWORK_MISMATCH),
    ("v1 network mismatch", 1, {f"{P}.network": "base"}, reasons.NETWORK_MISMATCH),
    (
        "v2 malformed caip2",
        2,
        {f"{A}.network": "eip155:abc", f"{R}.network": "eip155:abc"},
        reasons.INVALID_NETWORK,
    ),
    ("v2 leading zero", 2, {f"{A}.network": "eip155:084532"}, reasons.INVALID_NETWORK),
    (
        "v2 solana",
        2,
        {
            f"{A}.network": "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1",
            f"{R}.network": "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1",
        },
        reasons.INVALID_NETWORK,
    ),
    ("v1 unknown name", 1, {f"{P}.network": "mars", f"{R}.network": "mars"}, reasons.INVALID_NETWORK),
    (
        "v2 chain not served",
        2,
        {f"{A}.network": "eip155:1", f"{R}.network": "eip155:1"},
        reasons.INVALID_NETWORK,
    ),
    (
        "v1 chain not served",
        1,
        {f"{P}.network": "polygon", f"{R}.network": "polygon"},
        reasons.INVALID_NETWORK,
    ),
    (
        "v2 legacy name both sides",
        2,
        {f"{A}.network": "base-sepolia", f"{R}.network": "base-sepolia"},
        reasons.INVALID_NETWORK,
    ),
    ("v2 legacy name in payload", 2, {f"{A}.network": "base-sepolia"}, reasons.INVALID_NETWORK),
    ("v2 no extra", 2, {f"{R}.extra": DELETE}, reasons.MISSING_EIP712_DOMAIN),
    ("v2 empty extra", 2, {f"{R}.extra": {}}, reasons.MISSING_EIP712_DOMAIN),
    ("v2 no version", 2, {f"{R}.extra": {"name": "USDC"}}, reasons.MISSING_EIP712_DOMAIN),
    ("v2 no name", 2, {f"{R}.extra": {"version": "2"}}, reasons.MISSING_EIP712_DOMAIN),
    ("v2 empty name", 2, {f"{R}.extra": {"name": "", "version": "2"}}, reasons.MISSING_EIP712_DOMAIN),
    ("v2 numeric version", 2, {f"{R}.extra": {"name": "USDC", "version": 2}}, reasons.MISSING_EIP712_DOMAIN),
    ("v1 null extra", 1, {f"{R}.extra": None}, reasons.MISSING_EIP712_DOMAIN),
    ("v2 unknown asset", 2, {f"{R}.asset": "0x" + "11" * 20}, reasons.UNSUPPORTED_ASSET),
    ("v2 mainnet USDC on sepolia", 2, {f"{R}.asset": USDC_BASE}, reasons.UNSUPPORTED_ASSET),
    ("v1 unknown asset", 1, {f"{R}.asset": "0x" + "11" * 20}, reasons.UNSUPPORTED_ASSET),
    (
        "v2 mainnet name on sepolia",
        2,
        {f"{R}.extra": {"name": "USD Coin", "version": "2"}},
        reasons.TOKEN_NAME_MISMATCH,
    ),
    ("v1 wrong name", 1, {f"{R}.extra": {"name": "usdc", "version": "2"}}, reasons.TOKEN_NAME_MISMATCH),
    ("v2 wrong version", 2, {f"{R}.extra": {"name": "USDC", "version": "1"}}, reasons.TOKEN_VERSION_MISMATCH),
    ("v2 to another address", 2, {f"{AU}.to": OTHER.address}, reasons.RECIPIENT_MISMATCH),
    ("v2 requirements payTo", 2, {f"{R}.payTo": OTHER.address}, reasons.RECIPIENT_MISMATCH),
    ("v1 to another address", 1, {f"{AU}.to": OTHER.address}, reasons.RECIPIENT_MISMATCH),
    ("v2 value more", 2, {f"{AU}.value": "10001"}, reasons.VALUE_MISMATCH),
    ("v2 value less", 2, {f"{AU}.value": "9999"}, reasons.VALUE_MISMATCH),
    ("v2 amount more", 2, {f"{R}.amount": "10001"}, reasons.VALUE_MISMATCH),
    ("v1 value more", 1, {f"{AU}.value": "20000"}, reasons.VALUE_MISMATCH),
    ("v1 value less", 1, {f"{AU}.value": "1"}, reasons.VALUE_MISMATCH),
]


@pytest.mark.parametrize(
    ("version", "changes", "reason"),
    [c[1:] for c in STATIC_REJECTIONS],
    ids=[c[0] for c in STATIC_REJECTIONS],
)
def test_static_rejection(version: int, changes: dict[str, Any], reason: str) -> None:
    exc = rejection(body_for(version, changes))
    assert exc.reason == reason
    assert exc.message


@pytest.mark.parametrize(
    "changes",
    [{f"{AU}.to": OTHER.address}, {f"{AU}.value": "9999"}],
    ids=["recipient", "value"],
)
def test_authorization_rejections_name_the_payer(changes: dict[str, Any]) -> None:
    assert rejection(body_for(2, changes)).payer == PAYER.address


def test_first_failure_wins() -> None:
    body = body_for(2, {f"{A}.scheme": "upto", f"{AU}.value": "1", f"{R}.extra": {}})
    assert rejection(body).reason == reasons.SCHEME_MISMATCH
    body = body_for(2, {f"{R}.extra": {}, f"{AU}.value": "1", f"{R}.asset": "0x" + "11" * 20})
    assert rejection(body).reason == reasons.MISSING_EIP712_DOMAIN


def test_token_domain_comes_from_the_registry() -> None:
    renamed = TokenRegistry([Token(84532, USDC_BASE_SEPOLIA, "Bridged USDC", "2", 6)])
    assert rejection(body_for(2), registry=renamed).reason == reasons.TOKEN_NAME_MISMATCH
    reversioned = TokenRegistry([Token(84532, USDC_BASE_SEPOLIA, "USDC", "3", 6)])
    assert rejection(body_for(2), registry=reversioned).reason == reasons.TOKEN_VERSION_MISMATCH
    assert rejection(body_for(2), registry=TokenRegistry([])).reason == reasons.UNSUPPORTED_ASSET


def test_base_mainnet_usdc_passes_with_its_own_domain_name() -> None:
    body = body_for(
        2,
        {
            f"{A}.network": "eip155:8453",
            f"{R}.network": "eip155:8453",
            f"{R}.asset": USDC_BASE,
            f"{R}.extra": {"name": "USD Coin", "version": "2"},
        },
    )
    assert static(body).name == "USD Coin"
    body[R]["extra"]["name"] = "USDC"
    assert rejection(body).reason == reasons.TOKEN_NAME_MISMATCH


def test_pay_to_allowlist() -> None:
    assert static(body_for(2), allowlist={PAY_TO.lower()}).address == USDC_BASE_SEPOLIA
    assert static(body_for(2), allowlist=()).address == USDC_BASE_SEPOLIA  # empty: no restriction
    exc = rejection(body_for(2), allowlist={"0x" + "22" * 20})
    assert exc.reason == reasons.PAY_TO_NOT_ALLOWED
    assert PAY_TO in exc.message


def test_valid_before_needs_the_margin() -> None:
    assert static(body_for(2), now=VALID_BEFORE - 6, margin=6)
    exc = rejection(body_for(2), now=VALID_BEFORE - 5, margin=6)
    assert exc.reason == reasons.VALID_BEFORE
    assert exc.payer == PAYER.address
    assert rejection(body_for(2), now=VALID_BEFORE - 30, margin=31).reason == reasons.VALID_BEFORE


def test_the_spec_example_is_expired_today() -> None:
    assert rejection(body_for(1), now=1_767_225_600).reason == reasons.VALID_BEFORE  # 2026-01-01


def test_valid_after_in_the_future() -> None:
    assert static(body_for(2), now=VALID_AFTER)
    exc = rejection(body_for(2), now=VALID_AFTER - 1)
    assert exc.reason == reasons.VALID_AFTER
    assert exc.payer == PAYER.address


# --- malformed payloads and requirements ----------------------------------------------------------------

MALFORMED_PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("placeholder nonce", {f"{AU}.nonce": "0x..."}),
    ("31-byte nonce", {f"{AU}.nonce": "0x" + "ab" * 31}),
    ("33-byte nonce", {f"{AU}.nonce": "0x" + "ab" * 33}),
    ("unprefixed nonce", {f"{AU}.nonce": "ab" * 32}),
    ("decimal nonce", {f"{AU}.nonce": str(2**255)}),
    ("placeholder signature", {SIG: "0x..."}),
    ("empty signature", {SIG: "0x"}),
    ("non-hex signature", {SIG: "0x" + "zz" * 65}),
    ("odd-length signature", {SIG: "0x" + "a" * 129}),
    ("missing signature", {SIG: DELETE}),
    ("negative value", {f"{AU}.value": "-1"}),
    ("exponent value", {f"{AU}.value": "1e4"}),
    ("hex value", {f"{AU}.value": "0x2710"}),
    ("decimal point value", {f"{AU}.value": "10000.0"}),
    ("empty value", {f"{AU}.value": ""}),
    ("padded value", {f"{AU}.value": " 10000"}),
    ("value above uint256", {f"{AU}.value": str(2**256)}),
    ("numeric value", {f"{AU}.value": 10000}),
    ("missing value", {f"{AU}.value": DELETE}),
    ("word validBefore", {f"{AU}.validBefore": "soon"}),
    ("null validAfter", {f"{AU}.validAfter": None}),
    ("placeholder from", {f"{AU}.from": "0x..."}),
    ("short to", {f"{AU}.to": "0x1234"}),
    ("no authorization", {f"{AU}": DELETE}),
    ("permit2 payload", {f"{P}.payload": {"signature": "0x12", "permit2Authorization": {"from": "0x1"}}}),
]


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize(
    "changes", [c[1] for c in MALFORMED_PAYLOADS], ids=[c[0] for c in MALFORMED_PAYLOADS]
)
def test_malformed_payload_is_invalid_exact_evm_payload(version: int, changes: dict[str, Any]) -> None:
    with pytest.raises(Rejected) as info:
        parse_request(body_for(version, changes))
    assert info.value.reason == reasons.MALFORMED_PAYLOAD
    assert info.value.message


MALFORMED_REQUIREMENTS: list[tuple[str, int, dict[str, Any]]] = [
    ("word amount", 2, {f"{R}.amount": "ten"}),
    ("negative amount", 2, {f"{R}.amount": "-1"}),
    ("amount above uint256", 2, {f"{R}.amount": str(2**256)}),
    ("role payTo", 2, {f"{R}.payTo": "merchant"}),
    ("symbol asset", 2, {f"{R}.asset": "USDC"}),
    ("fractional v1 amount", 1, {f"{R}.maxAmountRequired": "1.5"}),
]


@pytest.mark.parametrize(
    ("version", "changes"),
    [c[1:] for c in MALFORMED_REQUIREMENTS],
    ids=[c[0] for c in MALFORMED_REQUIREMENTS],
)
def test_malformed_requirements_are_invalid_payment_requirements(
    version: int, changes: dict[str, Any]
) -> None:
    with pytest.raises(Rejected) as info:
        parse_request(body_for(version, changes))
    assert info.value.reason == reasons.INVALID_PAYMENT_REQUIREMENTS


@pytest.mark.parametrize("x402_version", [0, 3, "2", None, 2.5, DELETE])
def test_unsupported_x402_version(x402_version: Any) -> None:
    with pytest.raises(Rejected) as info:
        parse_request(body_for(2, {f"{P}.x402Version": x402_version}))
    assert info.value.reason == reasons.INVALID_X402_VERSION


BAD_BODIES: list[tuple[str, Any]] = [
    ("list", [BASE_BODIES[2]]),
    ("string", "eyJ4NDAyVmVyc2lvbiI6Mn0="),
    ("null", None),
    ("number", 2),
    ("empty object", {}),
    ("no paymentPayload", {k: v for k, v in BASE_BODIES[2].items() if k != P}),
    ("no paymentRequirements", {k: v for k, v in BASE_BODIES[2].items() if k != R}),
    ("null paymentPayload", {**BASE_BODIES[2], P: None}),
    ("base64 paymentPayload", {**BASE_BODIES[2], P: "eyJ4NDAyVmVyc2lvbiI6Mn0="}),
    ("list paymentRequirements", {**BASE_BODIES[2], R: [BASE_BODIES[2][R]]}),
    ("v2 without accepted", body_for(2, {A: DELETE})),
    ("v2 requirements in v1 shape", {**BASE_BODIES[2], R: BASE_BODIES[1][R]}),
    ("v1 requirements without resource", body_for(1, {f"{R}.resource": DELETE})),
]


@pytest.mark.parametrize("body", [b[1] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
def test_bodies_that_are_not_facilitator_requests_are_bad_requests(body: Any) -> None:
    with pytest.raises(BadRequest):
        parse_request(body)


def test_network_hint_survives_broken_bodies() -> None:
    assert network_hint(BASE_BODIES[1]) == "base-sepolia"
    assert network_hint(BASE_BODIES[2]) == "eip155:84532"
    assert network_hint([1]) == ""
    assert network_hint({R: {"network": 5}}) == ""
    assert network_hint({R: "x"}) == ""


# --- bugs: inputs that escape as plain exceptions or are accepted although malformed --------------------


def test_from_address_with_trailing_newline_is_malformed_payload() -> None:
    with pytest.raises(Rejected) as info:
        parse_request(body_for(2, {f"{AU}.from": PAYER.address + "\n"}))
    assert info.value.reason == reasons.MALFORMED_PAYLOAD


def test_pay_to_with_trailing_newline_is_invalid_requirements() -> None:
    with pytest.raises(Rejected) as info:
        parse_request(body_for(2, {f"{R}.payTo": PAY_TO + "\n"}))
    assert info.value.reason == reasons.INVALID_PAYMENT_REQUIREMENTS


def test_superscript_digit_network_is_invalid_network() -> None:
    exc = rejection(body_for(2, {f"{A}.network": "eip155:²", f"{R}.network": "eip155:²"}))
    assert exc.reason == reasons.INVALID_NETWORK


def test_non_ascii_digit_network_is_invalid_network() -> None:
    exc = rejection(body_for(2, {f"{A}.network": "eip155:٨٤٥٣٢", f"{R}.network": "eip155:٨٤٥٣٢"}))
    assert exc.reason == reasons.INVALID_NETWORK


@pytest.mark.parametrize(
    "changes",
    [
        {f"{AU}.value": "10000\n"},
        {f"{R}.amount": "10000\n"},
        {f"{AU}.nonce": "0x" + " ".join([NONCE[2:][i : i + 2] for i in range(0, 64, 2)])},
        {SIG: "0x " + BASE_BODIES[2][P]["payload"]["signature"][2:]},
    ],
    ids=["value newline", "amount newline", "spaced nonce", "spaced signature"],
)
def test_whitespace_in_numbers_and_hex_is_malformed(changes: dict[str, Any]) -> None:
    with pytest.raises(Rejected) as info:
        parse_request(body_for(2, changes))
    assert info.value.reason in (reasons.MALFORMED_PAYLOAD, reasons.INVALID_PAYMENT_REQUIREMENTS)


# --- signature plans -------------------------------------------------------------------------------------


def test_eoa_plan_for_a_valid_signature() -> None:
    payment = parse_request(body_for(2))
    plan = plan_for_eoa(digest_of(payment), payment.signature, payment.payer)
    assert plan.kind is SignatureKind.EOA
    assert plan.signature == payment.signature
    assert plan.ecdsa is not None and plan.ecdsa.v in (27, 28)
    assert plan.deployment is None


def test_eoa_plan_normalises_v_0_1_for_the_chain() -> None:
    body = body_for(2)
    sig = bytes.fromhex(body[P]["payload"]["signature"][2:])
    body[P]["payload"]["signature"] = "0x" + (sig[:64] + bytes([sig[64] - 27])).hex()
    payment = parse_request(body)
    plan = plan_for_eoa(digest_of(payment), payment.signature, payment.payer)
    assert plan.signature == sig


def test_signature_by_another_key_is_invalid_signature() -> None:
    body = body_for(2)
    body[P]["payload"]["signature"] = sign(body[P]["payload"]["authorization"], key=OTHER)
    payment = parse_request(body)
    with pytest.raises(Rejected) as info:
        plan_for_eoa(digest_of(payment), payment.signature, payment.payer)
    assert info.value.reason == reasons.SIGNATURE
    assert info.value.payer == PAYER.address
    assert OTHER.address in info.value.message


def test_signature_under_the_mainnet_domain_is_invalid_on_sepolia() -> None:
    body = body_for(2)
    body[P]["payload"]["signature"] = sign(body[P]["payload"]["authorization"], domain=BASE_DOMAIN)
    payment = parse_request(body)
    with pytest.raises(Rejected) as info:
        plan_for_eoa(digest_of(payment), payment.signature, payment.payer)
    assert info.value.reason == reasons.SIGNATURE


def test_signature_over_other_terms_is_invalid_signature() -> None:
    # The static checks pass (value matches the requirements) but the client signed a different value.
    body = body_for(2)
    signed_for = {**body[P]["payload"]["authorization"], "value": "1"}
    body[P]["payload"]["signature"] = sign(signed_for)
    payment = parse_request(body)
    assert static(body)
    with pytest.raises(Rejected) as info:
        plan_for_eoa(digest_of(payment), payment.signature, payment.payer)
    assert info.value.reason == reasons.SIGNATURE


def test_high_s_twin_of_a_valid_signature_is_invalid_signature() -> None:
    payment = parse_request(body_for(2))
    sig = payment.signature
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(Rejected) as info:
        plan_for_eoa(digest_of(payment), twin, payment.payer)
    assert info.value.reason == reasons.SIGNATURE


@pytest.mark.parametrize("length", [64, 66, 70, 200])
def test_non_65_byte_signature_without_code_is_undeployed_smart_wallet(length: int) -> None:
    payment = parse_request(body_for(2))
    signature = (payment.signature * 4)[:length]
    with pytest.raises(Rejected) as info:
        plan_for_eoa(digest_of(payment), signature, payment.payer)
    assert info.value.reason == reasons.UNDEPLOYED_SMART_WALLET
    assert info.value.payer == PAYER.address


def test_counterfactual_wallet_from_a_factory_not_allowed() -> None:
    payment = parse_request(body_for(2))
    wrapped = erc6492.wrap(FACTORY, b"\x01\x02", payment.signature)
    with pytest.raises(Rejected) as info:
        plan_for_counterfactual(wrapped, payment.payer, {"0x" + "99" * 20})
    assert info.value.reason == reasons.EIP6492_FACTORY_NOT_ALLOWED
    with pytest.raises(Rejected) as info:
        plan_for_counterfactual(wrapped, payment.payer, set())  # default: deny
    assert info.value.reason == reasons.EIP6492_FACTORY_NOT_ALLOWED


def test_counterfactual_wallet_from_an_allowed_factory() -> None:
    payment = parse_request(body_for(2))
    wrapped = erc6492.wrap(FACTORY, b"\x01\x02", payment.signature)
    plan = plan_for_counterfactual(wrapped, payment.payer, {FACTORY.lower()})
    assert plan.kind is SignatureKind.ERC6492
    assert plan.signature == payment.signature  # the inner signature goes on-chain
    assert plan.deployment is not None
    assert (plan.deployment.factory, plan.deployment.factory_calldata) == (FACTORY, b"\x01\x02")


def test_malformed_counterfactual_wrapper_is_malformed_payload() -> None:
    with pytest.raises(Rejected) as info:
        plan_for_counterfactual(b"\xff" * 40 + erc6492.MAGIC_SUFFIX, PAYER.address, {FACTORY.lower()})
    assert info.value.reason == reasons.MALFORMED_PAYLOAD
