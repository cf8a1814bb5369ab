from __future__ import annotations

from shared.evm.calls import decode_revert_reason


class RpcUnavailable(Exception):
    """No endpoint answered: every URL failed at the transport level or is cooling down."""


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
