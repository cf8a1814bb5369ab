"""Which signature check applies, mirroring FiatToken's SignatureChecker so that verify never passes what
the token would reject: no code at the payer means ECDSA only; code means ERC-1271 only; an ERC-6492
wrapper with no code means a counterfactual wallet, accepted only from an allow-listed factory."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shared.evm import erc6492
from shared.evm.hashing import checksum_address
from shared.evm.signatures import (
    EcdsaSignature,
    SignatureError,
    parse_ecdsa,
    recover_signer,
    recover_signer_bytes,
)
from shared.x402 import reasons

from .payment import Rejected


class SignatureKind(Enum):
    EOA = "eoa"
    ERC1271 = "erc1271"
    ERC6492 = "erc6492"


@dataclass(frozen=True, slots=True)
class SignaturePlan:
    """How the transfer will be called: the v,r,s overload for EOAs, the bytes overload otherwise."""

    kind: SignatureKind
    signature: bytes  # what goes on-chain (the inner signature for a deployed 6492 wallet)
    ecdsa: EcdsaSignature | None = None
    deployment: erc6492.Erc6492Signature | None = None


def ecdsa_signer(digest: bytes, signature: bytes) -> tuple[EcdsaSignature | None, str | None, str]:
    """(parsed signature, recovered signer, why not) for a would-be EOA signature."""
    try:
        sig = parse_ecdsa(signature)
        return sig, recover_signer(digest, sig), ""
    except SignatureError as exc:
        return None, None, str(exc)


def plan_for_eoa(digest: bytes, signature: bytes, payer: str) -> SignaturePlan:
    if erc6492.is_erc6492(signature):
        raise Rejected(reasons.UNDEPLOYED_SMART_WALLET, "unreachable: ERC-6492 handled by caller", payer)
    if len(signature) != 65:
        raise Rejected(
            reasons.UNDEPLOYED_SMART_WALLET,
            f"a {len(signature)}-byte signature needs a contract wallet, and {payer} has no code",
            payer,
        )
    try:
        sig = parse_ecdsa(signature)
        signer = recover_signer_bytes(digest, sig)
    except SignatureError as exc:
        raise Rejected(reasons.SIGNATURE, str(exc), payer) from None
    # Bytes, not spellings: checksumming the recovered key on every verify costs more than recovering it.
    if signer != bytes.fromhex(payer[2:]):
        raise Rejected(
            reasons.SIGNATURE,
            f"signature recovers to {checksum_address(signer)}, not the payer {payer}",
            payer,
        )
    return SignaturePlan(SignatureKind.EOA, sig.to_bytes(), ecdsa=sig)


def plan_for_counterfactual(signature: bytes, payer: str, allowed_factories: set[str]) -> SignaturePlan:
    try:
        wrapped = erc6492.unwrap(signature)
    except erc6492.Erc6492Error as exc:
        raise Rejected(reasons.MALFORMED_PAYLOAD, str(exc), payer) from None
    if wrapped.factory.lower() not in allowed_factories:
        raise Rejected(
            reasons.EIP6492_FACTORY_NOT_ALLOWED,
            f"ERC-6492 factory {wrapped.factory} is not allow-listed",
            payer,
        )
    return SignaturePlan(SignatureKind.ERC6492, wrapped.inner, deployment=wrapped)


def inner_for_deployed(signature: bytes) -> bytes:
    """A deployed wallet may still send a 6492 wrapper; the token wants the inner signature."""
    if erc6492.is_erc6492(signature):
        try:
            return erc6492.unwrap(signature).inner
        except erc6492.Erc6492Error:
            return signature
    return signature
