"""Reason codes the resource server puts in `error` (402 challenges, 4xx/5xx JSON bodies).

Facilitator reasons (invalidReason / errorReason, see shared/x402/reasons.py) are passed through as they are;
these are the ones only the resource server can know."""

from typing import Final

PAYMENT_REQUIRED: Final = "payment_required"
CHALLENGE_EXPIRED: Final = "challenge_expired"
CHALLENGE_UNKNOWN: Final = "challenge_unknown"
# The challenge was issued for another route or other parameters: a cheaper price cannot be reused.
CHALLENGE_MISMATCH: Final = "challenge_mismatch"
# `accepted` differs from every requirement the challenge was issued with.
REQUIREMENTS_MISMATCH: Final = "requirements_mismatch"
CHALLENGE_USED: Final = "challenge_already_used"
PAYMENT_USED: Final = "payment_already_used"
NO_MATCHING_CHALLENGE: Final = "no_matching_challenge"
SETTLEMENT_FAILED: Final = "settlement_failed"
# Release reason of a payment whose settle may have been sent and whose outcome was not recorded: asked once
# its authorization had expired, the facilitator had never settled it, so nothing was charged.
ABANDONED_UNSETTLED: Final = "abandoned_unsettled"

INVALID_PAYMENT_HEADER: Final = "invalid_payment_header"
INVALID_PARAMS: Final = "invalid_params"
INVALID_REQUEST: Final = "invalid_request"
# Gateway: a path the upstream could read as another one than was priced (see gateway.normalize_path).
INVALID_PATH: Final = "invalid_path"
BODY_TOO_LARGE: Final = "body_too_large"
UNPRICEABLE: Final = "unpriceable"
NO_PRICED_ROUTE: Final = "no_priced_route"

FACILITATOR_UNAVAILABLE: Final = "facilitator_unavailable"
FACILITATOR_BAD_RESPONSE: Final = "facilitator_bad_response"
STORAGE_UNAVAILABLE: Final = "storage_unavailable"
UPSTREAM_UNAVAILABLE: Final = "upstream_unavailable"
UNAUTHORIZED: Final = "unauthorized"
