"""x402 wire schemas, v1 and v2, as they travel between client, resource server and facilitator.

Unknown keys are ignored on input (peers add fields over time) and `None` fields are dropped on output
(a null `extra` once broke the TypeScript SDK's parser).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class WireModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ResourceInfo(WireModel):
    url: str
    description: str | None = None
    mime_type: str | None = Field(default=None, alias="mimeType")


class PaymentRequirementsV2(WireModel):
    scheme: str
    network: str
    amount: str
    asset: str
    pay_to: str = Field(alias="payTo")
    max_timeout_seconds: int = Field(alias="maxTimeoutSeconds")
    extra: dict[str, Any] | None = None


class PaymentRequirementsV1(WireModel):
    scheme: str
    network: str
    max_amount_required: str = Field(alias="maxAmountRequired")
    asset: str
    pay_to: str = Field(alias="payTo")
    resource: str
    description: str = ""
    mime_type: str = Field(default="", alias="mimeType")
    output_schema: dict[str, Any] | None = Field(default=None, alias="outputSchema")
    max_timeout_seconds: int = Field(alias="maxTimeoutSeconds")
    extra: dict[str, Any] | None = None


class PaymentPayloadV2(WireModel):
    x402_version: Literal[2] = Field(default=2, alias="x402Version")
    resource: ResourceInfo | None = None
    accepted: PaymentRequirementsV2
    payload: dict[str, Any]
    extensions: dict[str, Any] | None = None


class PaymentPayloadV1(WireModel):
    x402_version: Literal[1] = Field(default=1, alias="x402Version")
    scheme: str
    network: str
    payload: dict[str, Any]


class PaymentRequiredV2(WireModel):
    x402_version: Literal[2] = Field(default=2, alias="x402Version")
    error: str | None = None
    resource: ResourceInfo
    accepts: list[PaymentRequirementsV2]
    extensions: dict[str, Any] | None = None


class PaymentRequiredV1(WireModel):
    x402_version: Literal[1] = Field(default=1, alias="x402Version")
    error: str = ""
    accepts: list[PaymentRequirementsV1]


class VerifyResponse(WireModel):
    is_valid: bool = Field(alias="isValid")
    invalid_reason: str | None = Field(default=None, alias="invalidReason")
    invalid_message: str | None = Field(default=None, alias="invalidMessage")
    payer: str | None = None


class SettleResponse(WireModel):
    success: bool
    error_reason: str | None = Field(default=None, alias="errorReason")
    error_message: str | None = Field(default=None, alias="errorMessage")
    payer: str | None = None
    transaction: str = ""
    network: str
    amount: str | None = None
    extensions: dict[str, Any] | None = None


class SupportedKind(WireModel):
    x402_version: int = Field(alias="x402Version")
    scheme: str
    network: str
    extra: dict[str, Any] | None = None


class SupportedResponse(WireModel):
    kinds: list[SupportedKind]
    extensions: list[str] = Field(default_factory=list)
    signers: dict[str, list[str]] = Field(default_factory=dict)


class ExactEvmAuthorization(WireModel):
    """EIP-3009 TransferWithAuthorization fields as strings, exactly as signed by the client."""

    from_: str = Field(alias="from")
    to: str
    value: str
    valid_after: str = Field(alias="validAfter")
    valid_before: str = Field(alias="validBefore")
    nonce: str


class ExactEvmPayload(WireModel):
    signature: str
    authorization: ExactEvmAuthorization


PaymentPayload = PaymentPayloadV1 | PaymentPayloadV2
PaymentRequirements = PaymentRequirementsV1 | PaymentRequirementsV2
