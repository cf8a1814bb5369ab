"""Resource server settings: environment variables with the prefix `X402_RS_` (lists comma-separated).

The database is X402_RS_DATABASE_URL or DATABASE_URL; with neither, an embedded PostgreSQL runs in
`data_dir`. The pricing itself lives in its own TOML file (`--pricing` / X402_RS_PRICING_FILE)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ResourceServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="X402_RS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 4021
    public_url: str | None = None  # base URL clients see (behind a proxy); default: from the Host header
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("X402_RS_DATABASE_URL", "DATABASE_URL")
    )
    data_dir: Path = Path(".x402-resource-server")

    pricing_file: Path | None = None
    pay_to: str | None = None  # payee for routes whose pricing names none

    facilitator_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:4020"]
    )
    facilitator_api_key: SecretStr | None = None
    facilitator_timeout_seconds: float = Field(default=10.0, gt=0)
    facilitator_settle_timeout_seconds: float = Field(default=60.0, gt=0)

    challenge_ttl_seconds: float = Field(default=300.0, gt=0)
    admin_api_key: SecretStr | None = None  # guards GET /audit; unset: /audit is closed
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_payment_header_bytes: int = Field(default=8 * 1024, gt=0)
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_lease_seconds: float = Field(default=60.0, gt=0)
    # A challenge still `verified` this long after its claim was abandoned (the process died in the handler
    # or during the settle call): the reconciler settles or releases it. Keep it well above the longest
    # handler plus facilitator_settle_timeout_seconds, or a live request could be resolved under it.
    stuck_verified_after_seconds: float = Field(default=600.0, gt=0)
    # Expired (never paid) challenges and their audit rows are deleted this long after expiry; 0 keeps them.
    expired_retention_seconds: float = Field(default=7 * 86400.0, ge=0)

    # Gateway mode
    upstream_url: str | None = None
    upstream_timeout_seconds: float = Field(default=60.0, gt=0)
    forward_authorization: bool = False  # pass the client's Authorization header on to the upstream

    log_level: str = "INFO"
    log_json: bool = True
    otel_exporter: str | None = None

    @field_validator("facilitator_urls", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [u.strip() for u in v.split(",") if u.strip()]
        return v

    @field_validator("facilitator_urls")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one facilitator URL is needed")
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"facilitator URL {url!r} must be http(s)")
        return v
