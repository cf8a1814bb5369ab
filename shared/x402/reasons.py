"""The one set of reason strings this stack emits in `invalidReason` / `errorReason`.

The x402 SDKs disagree on these strings. We use the TypeScript/Go set (the TS resource server is the most
common peer and Go documents them as character-for-character identical), plus the few codes the newer
foundation facilitators added for cases those lacked (`settlement_pending`, `asset_not_deployed_contract`,
`eip6492_factory_not_allowed`, `invalid_exact_evm_transfer_event_mismatch`). README.md lists them all.
"""

from typing import Final

# Envelope and routing
INVALID_PAYLOAD: Final = "invalid_payload"
INVALID_PAYMENT_REQUIREMENTS: Final = "invalid_payment_requirements"
INVALID_X402_VERSION: Final = "invalid_x402_version"
UNSUPPORTED_SCHEME: Final = "unsupported_scheme"
INVALID_NETWORK: Final = "invalid_network"
UNSUPPORTED_ASSET: Final = "unsupported_asset"
PAY_TO_NOT_ALLOWED: Final = "pay_to_not_allowed"

# exact / EVM / EIP-3009
SCHEME_MISMATCH: Final = "invalid_exact_evm_scheme"
NETWORK_MISMATCH: Final = "invalid_exact_evm_network_mismatch"
MISSING_EIP712_DOMAIN: Final = "invalid_exact_evm_missing_eip712_domain"
MALFORMED_PAYLOAD: Final = "invalid_exact_evm_payload"
RECIPIENT_MISMATCH: Final = "invalid_exact_evm_recipient_mismatch"
VALUE_MISMATCH: Final = "invalid_exact_evm_authorization_value"
VALID_BEFORE: Final = "invalid_exact_evm_payload_authorization_valid_before"
VALID_AFTER: Final = "invalid_exact_evm_payload_authorization_valid_after"
SIGNATURE: Final = "invalid_exact_evm_signature"
UNDEPLOYED_SMART_WALLET: Final = "invalid_exact_evm_payload_undeployed_smart_wallet"
EIP6492_FACTORY_NOT_ALLOWED: Final = "eip6492_factory_not_allowed"
ASSET_NOT_DEPLOYED: Final = "asset_not_deployed_contract"
NONCE_ALREADY_USED: Final = "invalid_exact_evm_nonce_already_used"
INSUFFICIENT_BALANCE: Final = "invalid_exact_evm_insufficient_balance"
TOKEN_NAME_MISMATCH: Final = "invalid_exact_evm_token_name_mismatch"
TOKEN_VERSION_MISMATCH: Final = "invalid_exact_evm_token_version_mismatch"
EIP3009_NOT_SUPPORTED: Final = "invalid_exact_evm_eip3009_not_supported"
SIMULATION_FAILED: Final = "invalid_exact_evm_transaction_simulation_failed"
TRANSACTION_FAILED: Final = "invalid_exact_evm_transaction_failed"
TRANSFER_EVENT_MISMATCH: Final = "invalid_exact_evm_transfer_event_mismatch"
SMART_WALLET_DEPLOYMENT_FAILED: Final = "smart_wallet_deployment_failed"

# Facilitator-side conditions
SETTLEMENT_PENDING: Final = "settlement_pending"
# A resource server's PAYMENT-RESPONSE for a payment it verified and holds, to settle when the paid work
# ends (a job): success false, no transaction yet. Not a facilitator answer.
SETTLEMENT_DEFERRED: Final = "settlement_deferred"
NETWORK_UNAVAILABLE: Final = "network_unavailable"
UNEXPECTED_SETTLE_ERROR: Final = "unexpected_settle_error"
