"""Choosing what to pay: the first of the server's options (servers list their preference first) that this
client can pay and the user's spending policy allows. Pure: a refusal names, for every option, the first
rule it broke, so "why did it not pay?" never needs a debugger."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Final

from shared.evm.address import is_address
from shared.networks import UnknownNetwork, caip2, chain_id_of
from shared.tokens import BUILTIN_TOKENS, Token

from .challenge import PaymentChallenge, PaymentOption

# A USD limit is only meaningful for tokens known to be worth one dollar per unit.
USD_STABLECOINS: Final[tuple[Token, ...]] = tuple(t for t in BUILTIN_TOKENS if t.symbol in {"USDC"})

# Refusal codes, stable for callers (the CLI's --json output carries them).
UNSUPPORTED_SCHEME: Final = "unsupported_scheme"
UNSUPPORTED_NETWORK: Final = "unsupported_network"
UNSUPPORTED_TRANSFER_METHOD: Final = "unsupported_transfer_method"
MISSING_EIP712_DOMAIN: Final = "missing_eip712_domain"
MALFORMED_OPTION: Final = "malformed_option"
NETWORK_NOT_ALLOWED: Final = "network_not_allowed"
ASSET_NOT_ALLOWED: Final = "asset_not_allowed"
UNPRICEABLE_ASSET: Final = "asset_not_a_known_usd_stablecoin"
OVER_LIMIT: Final = "amount_over_limit"
VALIDITY_TOO_LONG: Final = "authorization_validity_too_long"
NO_OPTIONS: Final = "no_payment_options"


def canonical_network(network: str) -> str:
    """CAIP-2 form, so that `base-sepolia` (v1) and `eip155:84532` (v2) are one network. Raises
    UnknownNetwork for names that are neither."""
    return caip2(chain_id_of(network))


@dataclass(frozen=True)
class SpendingPolicy:
    """Limits per request. At least one of `max_atomic` (in the option's own token units) and `max_usd`
    (only for known USD stablecoins) is required; both must hold when both are set. `networks` (CAIP-2 or
    v1 names) and `assets` (addresses, or symbols of known tokens) are allow-lists; None allows any."""

    max_atomic: int | None = None
    max_usd: Decimal | None = None
    networks: frozenset[str] | None = None
    assets: frozenset[str] | None = None
    # A signed authorization can be used by anyone who holds it until validBefore (now + maxTimeoutSeconds):
    # a server may not ask for one that lives longer than this.
    max_valid_seconds: int = 86_400
    usd_tokens: tuple[Token, ...] = field(default=USD_STABLECOINS, repr=False)

    def __post_init__(self) -> None:
        if self.max_atomic is None and self.max_usd is None:
            raise ValueError("a spending policy needs a limit: max_atomic or max_usd")
        if self.max_atomic is not None and self.max_atomic < 0:
            raise ValueError("max_atomic must not be negative")
        if self.max_usd is not None and not (self.max_usd.is_finite() and self.max_usd >= 0):
            raise ValueError("max_usd must be a non-negative amount")
        if self.max_valid_seconds <= 0:
            raise ValueError("max_valid_seconds must be positive")
        for network in self.networks or ():
            canonical_network(network)  # unknown names fail here, not silently at selection time
        for asset in self.assets or ():
            if not asset:
                raise ValueError("empty asset in the allow-list")

    def usd_token(self, chain_id: int, asset: str) -> Token | None:
        return next(
            (t for t in self.usd_tokens if t.chain_id == chain_id and t.address.lower() == asset.lower()),
            None,
        )


@dataclass(frozen=True)
class Rejection:
    index: int
    option: str
    code: str
    detail: str


@dataclass(frozen=True)
class Choice:
    option: PaymentOption
    usd: Decimal | None  # the price in dollars, when the asset is a known USD stablecoin


@dataclass(frozen=True)
class Refusal:
    rejections: tuple[Rejection, ...]

    @property
    def code(self) -> str:
        """The shared code when every option failed the same way, else `no_acceptable_option`."""
        codes = {r.code for r in self.rejections}
        if not codes:
            return NO_OPTIONS
        return codes.pop() if len(codes) == 1 else "no_acceptable_option"

    @property
    def reason(self) -> str:
        if not self.rejections:
            return "the server offers no payment options"
        parts = [f"option {r.option}: {r.detail}" for r in self.rejections]
        return "no acceptable payment option: " + "; ".join(parts)


def select_option(challenge: PaymentChallenge, policy: SpendingPolicy) -> Choice | Refusal:
    rejections = [Rejection(i, f"#{i + 1}", MALFORMED_OPTION, problem) for i, problem in challenge.malformed]
    for option in challenge.options:
        outcome = evaluate(option, policy)
        if isinstance(outcome, Choice):
            return outcome
        rejections.append(outcome)
    return Refusal(tuple(sorted(rejections, key=lambda r: r.index)))


def evaluate(option: PaymentOption, policy: SpendingPolicy) -> Choice | Rejection:
    """Can we pay this option, and may we? Checks run from "impossible" to "not allowed" to "too dear",
    so the first rule broken is the most fundamental one."""

    def reject(code: str, detail: str) -> Rejection:
        return Rejection(option.index, option.describe(), code, detail)

    if option.scheme != "exact":
        return reject(UNSUPPORTED_SCHEME, f"scheme {option.scheme!r} is not supported (only 'exact')")
    try:
        network = canonical_network(option.network)
    except UnknownNetwork as exc:
        return reject(UNSUPPORTED_NETWORK, f"{exc} (only EVM eip155 networks are supported)")
    chain_id = chain_id_of(network)
    if not is_address(option.asset) or not is_address(option.pay_to):
        return reject(MALFORMED_OPTION, "asset and payTo must be 0x addresses")
    if option.requirements.max_timeout_seconds <= 0:
        return reject(MALFORMED_OPTION, "maxTimeoutSeconds must be positive")
    method = option.extra.get("assetTransferMethod", "eip3009")
    if method != "eip3009":
        return reject(UNSUPPORTED_TRANSFER_METHOD, f"asset transfer method {method!r} (only EIP-3009)")
    if not isinstance(option.extra.get("name"), str) or not isinstance(option.extra.get("version"), str):
        return reject(MISSING_EIP712_DOMAIN, "extra lacks the token's EIP-712 name and version")

    if option.requirements.max_timeout_seconds > policy.max_valid_seconds:
        return reject(
            VALIDITY_TOO_LONG,
            f"maxTimeoutSeconds {option.requirements.max_timeout_seconds} would keep the authorization valid "
            f"longer than the limit of {policy.max_valid_seconds} s",
        )
    if policy.networks is not None and network not in _canonical(policy.networks):
        allowed = ", ".join(sorted(policy.networks))
        return reject(
            NETWORK_NOT_ALLOWED, f"network {option.network} is not in the allowed networks ({allowed})"
        )
    if policy.assets is not None and not _asset_allowed(option.asset, chain_id, policy.assets):
        allowed = ", ".join(sorted(policy.assets))
        return reject(ASSET_NOT_ALLOWED, f"asset {option.asset} is not in the allowed assets ({allowed})")

    if policy.max_atomic is not None and option.amount > policy.max_atomic:
        return reject(
            OVER_LIMIT, f"amount {option.amount} exceeds the limit of {policy.max_atomic} atomic units"
        )
    usd: Decimal | None = None
    token = policy.usd_token(chain_id, option.asset)
    if token is not None:
        usd = Decimal(option.amount).scaleb(-token.decimals)
    if policy.max_usd is not None:
        if token is None:
            return reject(
                UNPRICEABLE_ASSET, f"a USD limit applies, but {option.asset} is not a known USD stablecoin"
            )
        # Integers, floored: the limit in the token's units never rounds up past what the user allowed.
        limit = int(policy.max_usd.scaleb(token.decimals).to_integral_value(rounding=ROUND_FLOOR))
        if option.amount > limit:
            return reject(
                OVER_LIMIT, f"price ${format_usd(usd)} exceeds the limit of ${policy.max_usd} per request"
            )
    return Choice(option, usd)


def format_usd(amount: Decimal | None) -> str:
    return "?" if amount is None else f"{amount.normalize():f}"


def _canonical(networks: Iterable[str]) -> set[str]:
    return {canonical_network(n) for n in networks}


def _asset_allowed(asset: str, chain_id: int, allowed: frozenset[str]) -> bool:
    for entry in allowed:
        if is_address(entry):
            if entry.lower() == asset.lower():
                return True
        elif any(
            t.chain_id == chain_id
            and t.address.lower() == asset.lower()
            and t.symbol.lower() == entry.lower()
            for t in BUILTIN_TOKENS
        ):
            return True
    return False
