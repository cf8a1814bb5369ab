"""Token registry: which token contracts a deployment accepts, with their EIP-712 domain."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from shared.evm.address import normalize_address


@dataclass(frozen=True, slots=True)
class Token:
    chain_id: int
    address: str  # checksummed
    name: str  # EIP-712 domain name, i.e. the contract's name()
    version: str  # EIP-712 domain version
    decimals: int
    symbol: str = "USDC"

    def atomic(self, amount: Decimal) -> int:
        return int(amount.scaleb(self.decimals))


# The classic pitfall lives here: Base mainnet USDC's name() is "USD Coin", Base Sepolia's is "USDC".
BUILTIN_TOKENS: Final[tuple[Token, ...]] = (
    Token(8453, normalize_address("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"), "USD Coin", "2", 6),
    Token(84532, normalize_address("0x036CbD53842c5426634e7929541eC2318f3dCF7e"), "USDC", "2", 6),
)


class TokenRegistry:
    def __init__(self, tokens: list[Token] | tuple[Token, ...]) -> None:
        self._by_key = {(t.chain_id, t.address.lower()): t for t in tokens}

    def get(self, chain_id: int, address: str) -> Token | None:
        return self._by_key.get((chain_id, address.lower()))

    def for_chain(self, chain_id: int) -> list[Token]:
        return [t for (cid, _), t in self._by_key.items() if cid == chain_id]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_key.values())
