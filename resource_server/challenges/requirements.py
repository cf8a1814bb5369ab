"""x402 payment requirements for a quote, in both protocol generations, carrying the challenge.

The challenge id and expiry ride in `extra`, next to the token's EIP-712 `name`/`version`: v2 clients echo
`accepted` verbatim, so the id comes back with the payment; a UI can count down from the expiry."""

from __future__ import annotations

from typing import Any

from shared.x402.models import (
    PaymentRequiredV1,
    PaymentRequiredV2,
    PaymentRequirementsV1,
    PaymentRequirementsV2,
    ResourceInfo,
)

from ..pricing.engine import Quote, TokenAmount
from ..pricing.model import Route

SCHEME = "exact"
CHALLENGE_ID = "challengeId"
CHALLENGE_EXPIRES_AT = "challengeExpiresAt"


def _extra(amount: TokenAmount, challenge_id: str, expires_at: int) -> dict[str, Any]:
    token = amount.option.token
    return {
        "name": token.name,
        "version": token.version,
        CHALLENGE_ID: challenge_id,
        CHALLENGE_EXPIRES_AT: expires_at,
    }


def requirements_v2(quote: Quote, *, challenge_id: str, expires_at: int) -> list[dict[str, Any]]:
    return [
        PaymentRequirementsV2(
            scheme=SCHEME,
            network=a.option.token.network,
            amount=str(a.atomic),
            asset=a.option.token.address,
            pay_to=a.option.pay_to,
            max_timeout_seconds=quote.route.max_timeout_seconds,
            extra=_extra(a, challenge_id, expires_at),
        ).to_wire()
        for a in quote.amounts
    ]


def requirements_v1(
    quote: Quote, *, resource: str, challenge_id: str, expires_at: int
) -> list[dict[str, Any]]:
    """Options on chains without a legacy v1 name are offered to v2 clients only."""
    route = quote.route
    out = []
    for a in quote.amounts:
        network = a.option.token.v1_network
        if network is None:
            continue
        out.append(
            PaymentRequirementsV1(
                scheme=SCHEME,
                network=network,
                max_amount_required=str(a.atomic),
                asset=a.option.token.address,
                pay_to=a.option.pay_to,
                resource=resource,
                description=route.description,
                mime_type=route.mime_type,
                output_schema=dict(route.output_schema) if route.output_schema else None,
                max_timeout_seconds=route.max_timeout_seconds,
                extra=_extra(a, challenge_id, expires_at),
            ).to_wire()
        )
    return out


def resource_info(route: Route, url: str) -> ResourceInfo:
    return ResourceInfo(url=url, description=route.description, mime_type=route.mime_type)


def payment_required_v2(
    requirements: list[dict[str, Any]], resource: ResourceInfo, error: str
) -> PaymentRequiredV2:
    return PaymentRequiredV2(
        error=error,
        resource=resource,
        accepts=[PaymentRequirementsV2.model_validate(r) for r in requirements],
    )


def payment_required_v1(requirements: list[dict[str, Any]], error: str) -> PaymentRequiredV1:
    return PaymentRequiredV1(
        error=error, accepts=[PaymentRequirementsV1.model_validate(r) for r in requirements]
    )
