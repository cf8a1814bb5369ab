"""Which port each part of the stack listens on: `--port-base` plus a fixed offset per service, so URLs
stay the same from run to run; base 0 takes any free ports (tests, parallel stacks)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

HOST = "127.0.0.1"
DEFAULT_PORT_BASE = 4020  # the facilitator's own default port

# Offsets from the base. The resource server's slot is reserved now so adding it moves no other port.
FACILITATOR_OFFSET = 0
RESOURCE_SERVER_OFFSET = 1
ANVIL_OFFSET = 2


class PortInUse(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    facilitator: int
    resource_server: int
    anvil: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        if base == 0:
            return cls(*free_ports(3))
        if not 0 < base <= 65535 - ANVIL_OFFSET:
            raise ValueError(f"port base {base} is out of range")
        return cls(base + FACILITATOR_OFFSET, base + RESOURCE_SERVER_OFFSET, base + ANVIL_OFFSET)

    def check_free(self) -> None:
        """Before anything starts, rather than after PostgreSQL took its seconds to come up."""
        ensure_free(self.anvil, "Anvil")
        ensure_free(self.facilitator, "facilitator")
        ensure_free(self.resource_server, "resource server")


def free_ports(count: int) -> list[int]:
    # All sockets stay bound until every port is chosen, so the kernel cannot hand out one twice.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ensure_free(port: int, service: str) -> None:
    """Fail before starting a service whose port is taken: a stranger answering our health probe would
    otherwise pass for the service."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise PortInUse(f"port {port} ({service}) is in use; choose another --port-base") from None
