"""Network identifiers: CAIP-2 (`eip155:<chainId>`, x402 v2) and the legacy v1 names."""

from __future__ import annotations

from typing import Final

# Base networks are what this stack ships configured; the rest let v1 clients name other chains.
V1_NETWORK_CHAIN_IDS: Final[dict[str, int]] = {
    "base": 8453,
    "base-sepolia": 84532,
    "ethereum": 1,
    "polygon": 137,
    "polygon-amoy": 80002,
    "avalanche": 43114,
    "avalanche-fuji": 43113,
    "iotex": 4689,
    "sei": 1329,
}
CHAIN_ID_V1_NAMES: Final[dict[int, str]] = {v: k for k, v in V1_NETWORK_CHAIN_IDS.items()}


class UnknownNetwork(ValueError):
    pass


def caip2(chain_id: int) -> str:
    return f"eip155:{chain_id}"


def chain_id_of(network: str) -> int:
    """Chain id of a CAIP-2 `eip155:<n>` id or a legacy v1 name."""
    if network.startswith("eip155:"):
        ref = network[len("eip155:") :]
        # ASCII only: str.isdigit() also accepts "²" and Arabic-Indic digits.
        if ref.isascii() and ref.isdigit() and not (len(ref) > 1 and ref.startswith("0")):
            return int(ref)
        raise UnknownNetwork(f"malformed CAIP-2 network id {network!r}")
    try:
        return V1_NETWORK_CHAIN_IDS[network]
    except KeyError:
        raise UnknownNetwork(f"unknown network {network!r}") from None


def v1_name(chain_id: int) -> str | None:
    return CHAIN_ID_V1_NAMES.get(chain_id)
