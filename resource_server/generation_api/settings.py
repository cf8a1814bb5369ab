"""Generation API settings: environment variables with the prefix `X402_RS_GENERATION_` (lists
comma-separated). The facilitator, database and payee come from the resource server's own settings."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class GenerationApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="X402_RS_GENERATION_", extra="ignore")

    enabled: bool = True  # `serve` offers /tools, /generate and /jobs
    worker: bool = True  # `serve` also runs a worker and the webhook dispatcher in-process
    worker_concurrency: int = Field(default=2, ge=1, le=64)  # jobs one worker process runs at once

    # What tools are paid in: "network" or "network/token" entries (CAIP-2 or legacy names; token symbol or
    # address, USDC by default). Empty: whatever the pricing file's routes accept.
    accepts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    pay_to: str | None = None  # payee for `accepts` entries (default X402_RS_PAY_TO)
    # Tools settled when the job is accepted instead of when it completes.
    settle_on_accept: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Kept at the end of a deferred payment's window for the settlement itself (the facilitator wants
    # several seconds of validity left, and its settle call waits for a receipt).
    settle_margin_seconds: float = Field(default=60.0, ge=20.0, le=3600.0)
    # Added to the window a client is asked to sign for, covering its latency between signing and us.
    signing_grace_seconds: float = Field(default=30.0, ge=0.0, le=600.0)

    max_queued: int = Field(default=200, ge=1)  # all tools and payers together; above it: 503
    max_active_per_payer: int = Field(default=3, ge=1)  # queued + running jobs of one payer; above it: 429

    # Signs job tokens and result links. Unset: one is generated and kept in the database, which every
    # replica shares. Rotating it invalidates every job token and link given out.
    secret: SecretStr | None = None
    link_ttl_seconds: int = Field(default=300, ge=5, le=86400)  # validity of signed result links
    payer_auth_window_seconds: int = Field(default=300, ge=10, le=3600)  # X-Job-Auth timestamp tolerance

    # Webhook destinations opened despite the private-address rules (CIDRs, addresses, host:port).
    webhook_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    echo_tool: bool = False  # register the no-op "echo" tool (benchmarks, tests)
    receipt_base_url: str | None = None  # whose /receipt/{tx} job views link to; default: first facilitator

    @field_validator("accepts", "settle_on_accept", "webhook_allow", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [item.strip() for item in v.split(",") if item.strip()]
        return v

    @field_validator("secret")
    @classmethod
    def _strong(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("the generation secret must be at least 32 characters")
        return v
