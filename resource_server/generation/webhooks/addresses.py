"""Which webhook destinations are allowed. Pure: addresses in, verdicts out.

Only public unicast addresses are reachable by default. Loopback, private, link-local, carrier-grade NAT,
multicast, unspecified, reserved and cloud-metadata addresses are refused, including when they hide
inside IPv6 (v4-mapped, NAT64, 6to4, Teredo). An explicit allow-list opens chosen targets for development.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata services: AWS/GCP/Azure/OpenStack (v4), AWS (v6), Alibaba Cloud. The first two are
# link-local / unique-local anyway; listed so the refusal names the real danger.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAMES = ("localhost", "localhost.localdomain")


class DestinationRefused(ValueError):
    """The destination is not a public address and not on the allow-list."""


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be contacted, or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = forbidden_reason(embedded)
            return f"{inner} (embedded in IPv6)" if inner else None
    if ip in _METADATA:
        return "cloud metadata address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_multicast:
        return "multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT address"
    if ip.is_private:
        return "private address"
    if ip.is_reserved:
        return "reserved address"
    if not ip.is_global:
        return "address that is not globally routable"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address; the server part is public by construction
    return None


def _split_host_port(entry: str) -> tuple[str, int]:
    if entry.startswith("["):
        host, sep, port = entry[1:].partition("]:")
    else:
        host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"allow-list entry {entry!r} is neither a CIDR, an address nor host:port")
    return host.lower(), int(port)


@dataclass(frozen=True, slots=True)
class AllowList:
    """Targets opened despite the rules above: networks (any port) and exact host:port endpoints."""

    networks: tuple[IPNetwork, ...] = ()
    endpoints: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Entries like "127.0.0.0/8", "::1", "localhost:8080", "[::1]:9000", "10.0.0.5:443"."""
        networks: list[IPNetwork] = []
        endpoints: set[tuple[str, int]] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            host, port = _split_host_port(entry)
            endpoints.add((_canonical_host(host), port))
        return cls(tuple(networks), frozenset(endpoints))

    @property
    def empty(self) -> bool:
        return not self.networks and not self.endpoints

    def allows(self, host: str, ip: IPAddress | None, port: int) -> bool:
        if (_canonical_host(host), port) in self.endpoints:
            return True
        if ip is None:
            return False
        if (str(ip), port) in self.endpoints:
            return True
        return any(ip.version == net.version and ip in net for net in self.networks)


def _canonical_host(host: str) -> str:
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host


def _is_local_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def check_resolved(host: str, port: int, addresses: Sequence[str], allow: AllowList) -> list[IPAddress]:
    """Validate EVERY resolved address; the caller then connects only to what this returns.

    All-or-nothing on purpose: an answer that mixes public and private addresses is what a rebinding
    attacker would serve, and connecting to "the public one" would depend on resolver ordering."""
    if not addresses:
        raise DestinationRefused(f"{host} did not resolve")
    checked: list[IPAddress] = []
    for text in addresses:
        # Scoped IPv6 addresses ("fe80::1%eth0") are link-local; the scope id would break ip_address.
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        reason = forbidden_reason(ip)
        if reason is not None and not allow.allows(host, ip, port):
            raise DestinationRefused(f"{host}:{port} resolves to {ip}, a {reason}")
        if ip not in checked:
            checked.append(ip)
    return checked


def check_webhook_url(url: str, allow: AllowList) -> str:
    """Reject, at submission, URLs that can never be delivered to: wrong scheme, credentials in the URL,
    or a literal address / local name that is forbidden. Hostnames are checked again at connect time."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DestinationRefused("webhook URL must be http or https")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("webhook URL must not carry credentials")
    host = parts.hostname
    if not host:
        raise DestinationRefused("webhook URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DestinationRefused("webhook URL has an invalid port") from None
    try:
        ip: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        check_resolved(host, port, [str(ip)], allow)
    elif _is_local_name(host) and allow.empty:
        # With an allow-list the name may resolve to an allowed network; connect time decides.
        raise DestinationRefused(f"{host} is a local name")
    return url
