from __future__ import annotations

from shared.evm.calls import decode_revert_reason


class RpcUnavailable(Exception):
    """No endpoint answered: every URL failed at the transport level or is cooling down."""


# What a failed call's own execution looks like across nodes (geth/Anvil "execution reverted", code 3;
# Nethermind/OpenEthereum "VM execution error." -32015 with "Reverted 0x…" data; older nodes
# "VM Exception while processing transaction: revert"; an estimate that runs out of gas).
_REVERT_CODES = frozenset({3, -32000, -32015})
_REVERT_MARKERS = ("revert", "invalid opcode", "out of gas", "gas required exceeds", "vm execution error")
# A node or provider that could not answer now, whatever was asked.
_TRANSIENT_CODES = frozenset({-32002, -32005, -32603})
_TRANSIENT_MARKERS = (
    "rate limit",
    "too many requests",
    "timeout",
    "timed out",
    "try again",
    "header not found",
    "missing trie node",
)
# A node's refusal of a transaction, whatever code a gateway wraps it in.
_REFUSAL_MARKERS = (
    "nonce too low",
    "insufficient funds",
    "underpriced",
    "fee cap",
    "intrinsic gas",
    "base fee",
    "gas limit",
)


class RpcError(Exception):
    """A JSON-RPC error object: the node answered, and the answer is an error (e.g. a revert)."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    @property
    def revert_data(self) -> bytes | None:
        if isinstance(self.data, str) and self.data.startswith("0x"):
            try:
                return bytes.fromhex(self.data[2:])
            except ValueError:
                return None
        return None

    @property
    def revert_reason(self) -> str:
        """Best human-readable reason: the decoded Error(string) if present, else the node's message."""
        data = self.revert_data
        if data:
            reason = decode_revert_reason(data)
            if reason:
                return reason
        prefix = "execution reverted: "
        return self.message[len(prefix) :] if self.message.startswith(prefix) else self.message

    @property
    def is_revert(self) -> bool:
        """The call itself failed when executed: a verdict on what was called. A node that could not
        answer (a rate limit, state it lacks, an internal error) says nothing about the payment."""
        if self.code == 3 or self.revert_data:
            return True
        if self.is_transient or self.is_refusal:
            return False
        text = f"{self.message} {self.data if isinstance(self.data, str) else ''}".lower()
        return self.code in _REVERT_CODES or any(marker in text for marker in _REVERT_MARKERS)

    @property
    def is_refusal(self) -> bool:
        """A node's refusal of a transaction as such (its nonce, fees or gas money), not of what it calls."""
        message = self.message.lower()
        return any(marker in message for marker in _REFUSAL_MARKERS)

    @property
    def is_nonce_too_low(self) -> bool:
        """The key's nonce was used outside this sender (another process, a replica on another database)."""
        return "nonce too low" in self.message.lower()

    @property
    def is_already_known(self) -> bool:
        """The node has this very transaction already: a send that went through before."""
        message = self.message.lower()
        return any(m in message for m in ("already known", "already imported", "known transaction"))

    @property
    def is_transient(self) -> bool:
        """The node or provider could not take the request now: it may be sent again as it is. A refusal
        of the transaction itself is not, whatever code carries it."""
        if self.is_refusal:
            return False
        message = self.message.lower()
        return self.code in _TRANSIENT_CODES or any(marker in message for marker in _TRANSIENT_MARKERS)
