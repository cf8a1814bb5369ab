"""What tools are paid in: explicit "network[/token]" entries, or what the pricing file's routes accept.
Pure; checked at start-up so a typo stops the server instead of surfacing at the first payment."""

from __future__ import annotations

from collections.abc import Sequence

from shared.evm.address import InvalidAddress, normalize_address
from shared.networks import UnknownNetwork, chain_id_of

from ..pricing.model import AcceptOption, PricingConfig


class AcceptsError(ValueError):
    pass


def resolve_accepts(
    entries: Sequence[str], pricing: PricingConfig, pay_to: str | None
) -> tuple[AcceptOption, ...]:
    if not entries:
        found: list[AcceptOption] = []
        for route in pricing.routes:
            found.extend(o for o in route.accepts if o not in found)
        if not found:
            raise AcceptsError(
                "generation needs payment options: set X402_RS_GENERATION_ACCEPTS (e.g. eip155:8453/USDC) "
                "or price at least one route in the pricing file"
            )
        return tuple(found)
    if not pay_to:
        raise AcceptsError(
            "X402_RS_GENERATION_ACCEPTS needs a payee: X402_RS_GENERATION_PAY_TO or X402_RS_PAY_TO"
        )
    try:
        payee = normalize_address(pay_to)
    except InvalidAddress as exc:
        raise AcceptsError(f"generation pay_to: {exc}") from None
    return tuple(_option(entry, pricing, payee) for entry in entries)


def _option(entry: str, pricing: PricingConfig, pay_to: str) -> AcceptOption:
    network, _, token = entry.partition("/")
    try:
        chain_id = chain_id_of(network.strip())
    except UnknownNetwork as exc:
        raise AcceptsError(f"generation accepts {entry!r}: {exc}") from None
    wanted = (token.strip() or "USDC").lower()
    on_chain = [t for t in pricing.tokens if t.chain_id == chain_id]
    matches = [t for t in on_chain if wanted in (t.symbol.lower(), t.address.lower())]
    if len(matches) != 1:
        known = ", ".join(sorted({t.symbol for t in on_chain})) or "none"
        problem = "no" if not matches else "an ambiguous"
        raise AcceptsError(f"generation accepts {entry!r}: {problem} token {wanted!r} there (known: {known})")
    if not matches[0].usd:
        raise AcceptsError(
            f"generation accepts {entry!r}: tool prices are in dollars; {matches[0].symbol} is not"
        )
    return AcceptOption(matches[0], pay_to)
