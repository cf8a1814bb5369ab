"""Checks that need no chain access, in the order the reference facilitators apply them.

Each raises `Rejected` with the reason clients will see; the first failure wins."""

from __future__ import annotations

from collections.abc import Collection

from shared.networks import UnknownNetwork, chain_id_of
from shared.tokens import Token, TokenRegistry
from shared.x402 import reasons

from .payment import ExactPayment, Rejected


def check_scheme_and_network(payment: ExactPayment) -> int:
    """Returns the chain id both sides agree on."""
    reqs = payment.requirements
    if payment.scheme != "exact" or reqs.scheme != "exact":
        raise Rejected(
            reasons.SCHEME_MISMATCH,
            f"scheme must be 'exact' (payload {payment.scheme!r}, requirements {reqs.scheme!r})",
        )
    try:
        paid_on, required_on = chain_id_of(payment.network), chain_id_of(reqs.network)
    except UnknownNetwork as exc:
        raise Rejected(reasons.INVALID_NETWORK, str(exc)) from None
    if payment.x402_version == 2 and not payment.network.startswith("eip155:"):
        raise Rejected(reasons.INVALID_NETWORK, "x402 v2 networks are CAIP-2 ids such as eip155:8453")
    if paid_on != required_on or payment.network != reqs.network:
        raise Rejected(
            reasons.NETWORK_MISMATCH, f"payload is for {payment.network}, requirements for {reqs.network}"
        )
    return paid_on


def check_token(payment: ExactPayment, chain_id: int, registry: TokenRegistry) -> Token:
    reqs = payment.requirements
    name, version = reqs.extra.get("name"), reqs.extra.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        raise Rejected(
            reasons.MISSING_EIP712_DOMAIN,
            "requirements.extra must carry the token's EIP-712 name and version",
        )
    token = registry.get(chain_id, reqs.asset)
    if token is None:
        raise Rejected(reasons.UNSUPPORTED_ASSET, f"asset {reqs.asset} is not accepted on eip155:{chain_id}")
    if name != token.name:
        raise Rejected(
            reasons.TOKEN_NAME_MISMATCH, f"EIP-712 name {name!r} does not match the token's {token.name!r}"
        )
    if version != token.version:
        raise Rejected(
            reasons.TOKEN_VERSION_MISMATCH,
            f"EIP-712 version {version!r} does not match the token's {token.version!r}",
        )
    return token


def check_pay_to_allowed(payment: ExactPayment, allowlist: Collection[str]) -> None:
    if allowlist and payment.requirements.pay_to.lower() not in allowlist:
        raise Rejected(reasons.PAY_TO_NOT_ALLOWED, f"payTo {payment.requirements.pay_to} is not served here")


def check_authorization(payment: ExactPayment, *, now: int, valid_before_margin: int) -> None:
    auth, reqs = payment.authorization, payment.requirements
    payer = auth.from_
    if auth.to != reqs.pay_to:
        raise Rejected(
            reasons.RECIPIENT_MISMATCH,
            f"authorization pays {auth.to}, requirements ask for {reqs.pay_to}",
            payer,
        )
    if auth.value != reqs.amount:
        raise Rejected(
            reasons.VALUE_MISMATCH,
            f"authorization value {auth.value} != required amount {reqs.amount}",
            payer,
        )
    if auth.valid_before < now + valid_before_margin:
        raise Rejected(
            reasons.VALID_BEFORE,
            f"authorization expires at {auth.valid_before}, too soon to settle "
            f"(now {now}, margin {valid_before_margin}s)",
            payer,
        )
    if auth.valid_after > now:
        raise Rejected(
            reasons.VALID_AFTER, f"authorization is valid only after {auth.valid_after} (now {now})", payer
        )


def run_static_checks(
    payment: ExactPayment,
    *,
    registry: TokenRegistry,
    served_chains: Collection[int],
    pay_to_allowlist: Collection[str],
    now: int,
    valid_before_margin: int,
) -> Token:
    chain_id = check_scheme_and_network(payment)
    if chain_id not in served_chains:
        raise Rejected(
            reasons.INVALID_NETWORK, f"network {payment.network} is not served by this facilitator"
        )
    token = check_token(payment, chain_id, registry)
    check_pay_to_allowed(payment, pay_to_allowlist)
    check_authorization(payment, now=now, valid_before_margin=valid_before_margin)
    return token
