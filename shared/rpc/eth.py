"""Typed wrappers for the Ethereum JSON-RPC methods the stack uses."""

from __future__ import annotations

from typing import Any

from shared.rpc.client import JsonRpcClient
from shared.rpc.errors import RpcError


def hex_int(value: int) -> str:
    return hex(value)


def to_int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def to_bytes(value: Any) -> bytes:
    return bytes.fromhex(value[2:]) if isinstance(value, str) and value.startswith("0x") else b""


class Eth:
    def __init__(self, rpc: JsonRpcClient) -> None:
        self.rpc = rpc

    async def chain_id(self) -> int:
        return to_int(await self.rpc.call("eth_chainId"))

    async def block_number(self) -> int:
        return to_int(await self.rpc.call("eth_blockNumber"))

    async def get_code(self, address: str, block: str = "latest") -> bytes:
        return to_bytes(await self.rpc.call("eth_getCode", [address, block]))

    async def get_balance(self, address: str, block: str = "latest") -> int:
        return to_int(await self.rpc.call("eth_getBalance", [address, block]))

    async def get_transaction_count(self, address: str, block: str = "pending") -> int:
        return to_int(await self.rpc.call("eth_getTransactionCount", [address, block]))

    async def call(self, to: str, data: bytes, *, sender: str | None = None, block: str = "latest") -> bytes:
        tx: dict[str, Any] = {"to": to, "data": "0x" + data.hex()}
        if sender:
            tx["from"] = sender
        return to_bytes(await self.rpc.call("eth_call", [tx, block]))

    async def estimate_gas(self, sender: str, to: str, data: bytes) -> int:
        return to_int(
            await self.rpc.call("eth_estimateGas", [{"from": sender, "to": to, "data": "0x" + data.hex()}])
        )

    async def send_raw_transaction(self, raw: bytes, *, batch: bool = True) -> str:
        return str(await self.rpc.call("eth_sendRawTransaction", ["0x" + raw.hex()], batch=batch))

    async def get_transaction_receipt(self, tx_hash: str) -> dict[str, Any] | None:
        result = await self.rpc.call("eth_getTransactionReceipt", [tx_hash])
        return result if isinstance(result, dict) else None

    async def get_transaction(self, tx_hash: str) -> dict[str, Any] | None:
        result = await self.rpc.call("eth_getTransactionByHash", [tx_hash])
        return result if isinstance(result, dict) else None

    async def get_block(self, block: str | int, full: bool = False) -> dict[str, Any] | None:
        tag = hex_int(block) if isinstance(block, int) else block
        result = await self.rpc.call("eth_getBlockByNumber", [tag, full])
        return result if isinstance(result, dict) else None

    async def fee_history(self) -> tuple[int, int]:
        """(base fee of the next block, a priority-fee suggestion)."""
        try:
            pending = await self.get_block("pending")
        except RpcError:  # some providers refuse the "pending" tag
            pending = None
        block = pending or await self.get_block("latest") or {}
        base = to_int(block.get("baseFeePerGas", "0x0"))
        try:
            tip = to_int(await self.rpc.call("eth_maxPriorityFeePerGas"))
        except RpcError:
            tip = 1_000_000
        return base, tip
