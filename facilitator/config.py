"""Facilitator configuration: environment variables (prefix `X402_`) and an optional TOML file.

Several networks are configured as a list (`networks` in the file). A single-chain deployment needs only
environment variables: X402_NETWORK, X402_RPC_URLS, X402_SIGNER_KEYS (comma-separated)."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shared.networks import caip2, chain_id_of
from shared.tokens import BUILTIN_TOKENS, Token


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class TokenSettings(BaseModel):
    address: str
    name: str
    version: str
    decimals: int = 6
    symbol: str = "USDC"


class NetworkSettings(BaseModel):
    network: str  # CAIP-2, e.g. eip155:8453
    rpc_urls: list[str] = Field(repr=False)  # hosted RPC URLs often carry API keys
    signer_keys: list[SecretStr] = Field(default_factory=list)
    # Name of an environment variable holding this network's keys (comma-separated), so that a TOML file
    # describing several networks never has to contain a key.
    signer_keys_env: str | None = None
    tokens: list[TokenSettings] = Field(default_factory=list)  # empty: the built-in USDC for the chain
    max_fee_per_gas_gwei: Decimal = Decimal("100")  # the cap: never pay more than this per gas
    max_priority_fee_gwei: Decimal = Decimal("2")
    gas_limit_multiplier: Decimal = Decimal("1.25")  # on top of eth_estimateGas
    receipt_timeout_seconds: float = 20.0  # bounded wait in /settle before answering settlement_pending
    receipt_poll_seconds: float = 0.05
    # The reconciler replaces a transaction pending this long (or at once when its fee cap is under the
    # base fee) with the same nonce and 12.5 % higher fees, within max_fee_per_gas_gwei.
    replace_after_seconds: float = Field(default=30.0, gt=0)
    # Concurrent plain transfers share one Multicall3 transaction, up to this many (1 = one transaction each).
    max_batch_transfers: int = Field(default=50, ge=1, le=300)
    eip6492_factories: list[str] = Field(
        default_factory=list
    )  # allow-list; empty denies counterfactual wallets
    min_signer_balance_wei: int = 10**15  # readiness turns red below this
    rpc_timeout_seconds: float = 5.0

    @property
    def chain_id(self) -> int:
        return chain_id_of(self.network)

    def token_list(self) -> list[Token]:
        from shared.evm.address import normalize_address

        if not self.tokens:
            return [t for t in BUILTIN_TOKENS if t.chain_id == self.chain_id]
        return [
            Token(self.chain_id, normalize_address(t.address), t.name, t.version, t.decimals, t.symbol)
            for t in self.tokens
        ]

    @field_validator("network")
    @classmethod
    def _caip2(cls, v: str) -> str:
        return caip2(chain_id_of(v))

    @model_validator(mode="after")
    def _keys_from_env(self) -> NetworkSettings:
        if self.signer_keys_env:
            raw = os.environ.get(self.signer_keys_env, "")
            self.signer_keys = [*self.signer_keys, *(SecretStr(k) for k in _split_csv(raw))]
        return self

    @field_validator("rpc_urls", "signer_keys", "eip6492_factories", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        return _split_csv(v)


class FacilitatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="X402_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 4020
    workers: int = Field(default=1, ge=1)  # processes; they coordinate through the database like replicas
    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Path(".x402-facilitator")
    db_pool_size: int = Field(default=32, ge=2)

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    auth_required: bool = True
    pay_to_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 64 * 1024

    networks: list[NetworkSettings] = Field(default_factory=list)
    # Single-chain shortcut, folded into `networks`.
    network: str | None = None
    rpc_urls: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    signer_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    eip6492_factories: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Any other per-network setting for the single-chain shortcut, as JSON:
    # X402_NETWORK_OPTIONS='{"receipt_timeout_seconds": 30, "max_fee_per_gas_gwei": "5"}'
    network_options: dict[str, Any] = Field(default_factory=dict)

    valid_before_margin_seconds: int = 6
    simulate_in_settle: bool = True
    # A settle reuses a /verify of the identical payload made this long ago or less (0 verifies every time).
    verify_reuse_seconds: float = Field(default=2.0, ge=0)
    receipt_key: SecretStr | None = None  # signs /receipt answers; defaults to the first signer key
    reconcile_interval_seconds: float = 5.0
    settle_lease_seconds: float = 30.0

    log_level: str = "INFO"
    log_json: bool = True
    otel_exporter: str | None = None

    @field_validator(
        "api_keys", "pay_to_allowlist", "rpc_urls", "signer_keys", "eip6492_factories", mode="before"
    )
    @classmethod
    def _csv(cls, v: Any) -> Any:
        return _split_csv(v)

    @model_validator(mode="after")
    def _fold_single_chain(self) -> FacilitatorSettings:
        if self.network:
            self.networks = [
                *self.networks,
                NetworkSettings.model_validate(
                    {
                        **self.network_options,
                        "network": self.network,
                        "rpc_urls": self.rpc_urls,
                        "signer_keys": self.signer_keys,
                        "eip6492_factories": self.eip6492_factories,
                    }
                ),
            ]
        seen: set[int] = set()
        for n in self.networks:
            if n.chain_id in seen:
                raise ValueError(f"network {n.network} is configured twice")
            seen.add(n.chain_id)
            if not n.rpc_urls:
                raise ValueError(f"network {n.network} has no rpc_urls")
            if not n.signer_keys:
                raise ValueError(f"network {n.network} has no signer_keys")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("X402_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)
