"""Webhook signing, the progress throttle, the destination rules and the connect-time resolver check."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import httpcore
import pytest

from resource_server.generation.webhooks.addresses import (
    AllowList,
    DestinationRefused,
    check_resolved,
    check_webhook_url,
    forbidden_reason,
)
from resource_server.generation.webhooks.guarded_transport import GuardedNetworkBackend
from resource_server.generation.webhooks.signing import sign, verify_signature
from resource_server.generation.webhooks.throttle import progress_webhook_due

SECRET = "whsec_test"
BODY = b'{"id":"e1","type":"job.completed"}'


def test_signature_verifies_and_tampering_fails():
    header = sign(SECRET, BODY, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature(SECRET, header, BODY, now=1_700_000_100)
    assert not verify_signature(SECRET, header, BODY.replace(b"completed", b"failed"), now=1_700_000_100)
    assert not verify_signature("other-secret", header, BODY, now=1_700_000_100)
    assert not verify_signature(SECRET, header, BODY, tolerance=300, now=1_700_000_301)  # too old
    assert not verify_signature(SECRET, header, BODY, tolerance=300, now=1_699_999_000)  # from the future
    # A re-stamped header without re-signing fails.
    assert not verify_signature(
        SECRET, header.replace("t=1700000000", "t=1700000200"), BODY, now=1_700_000_200
    )


def test_signature_header_parsing_is_strict_but_allows_rotation():
    t = 1_700_000_000
    good = sign(SECRET, BODY, t).split("v1=")[1]
    assert verify_signature(SECRET, f"t={t},v1={'0' * 64},v1={good}", BODY, now=t)  # two secrets in rotation
    assert verify_signature(SECRET, f"t={t},v0=legacy,v1={good}", BODY, now=t)  # unknown schemes ignored
    for header in ("", f"v1={good}", f"t={t}", f"t=abc,v1={good}", f"t={t},t={t},v1={good}", "garbage"):
        assert not verify_signature(SECRET, header, BODY, now=t)


def test_progress_throttle_allows_one_event_per_interval():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert progress_webhook_due(None, now)
    assert not progress_webhook_due(now - timedelta(seconds=4.9), now)
    assert progress_webhook_due(now - timedelta(seconds=5), now)
    assert progress_webhook_due(now + timedelta(seconds=60), now)  # a clock step back does not silence it
    assert not progress_webhook_due(now - timedelta(seconds=9), now, timedelta(seconds=10))


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:127.0.0.1", "loopback"),  # v4-mapped
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
        ("240.0.0.1", "address"),  # reserved (Python files it under private)
    ],
)
def test_forbidden_addresses(address, reason):
    found = forbidden_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def test_allow_list_opens_networks_and_exact_endpoints():
    allow = AllowList.parse(["127.0.0.0/8", "::1", "localhost:8080", "[fd00::5]:9000", "10.0.0.7:443"])
    assert allow.allows("anything", ipaddress.ip_address("127.0.0.2"), 1)
    assert allow.allows("x", ipaddress.ip_address("::1"), 5)
    assert allow.allows("LOCALHOST", None, 8080) and not allow.allows("localhost", None, 8081)
    assert allow.allows("h", ipaddress.ip_address("fd00::5"), 9000)
    assert not allow.allows("h", ipaddress.ip_address("10.0.0.7"), 80)
    with pytest.raises(ValueError):
        AllowList.parse(["not an entry"])
    assert AllowList().empty and not allow.empty


def test_every_resolved_address_must_pass():
    none = AllowList()
    assert [str(a) for a in check_resolved("example.com", 443, ["93.184.216.34"], none)] == ["93.184.216.34"]
    # One private answer among public ones is what a rebinding attacker serves: all refused.
    with pytest.raises(DestinationRefused, match=r"10\.0\.0\.1"):
        check_resolved("evil.example", 443, ["93.184.216.34", "10.0.0.1"], none)
    with pytest.raises(DestinationRefused):
        check_resolved("nothing.example", 443, [], none)
    with pytest.raises(DestinationRefused):
        check_resolved("scoped.example", 443, ["fe80::1%eth0"], none)


def test_webhook_urls_are_checked_at_submission_too():
    none = AllowList()
    assert check_webhook_url("https://hooks.example.com/x", none)
    for url in (
        "ftp://example.com/x",
        "https://user:pw@example.com/x",
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:3000/hook",
        "https:///nohost",
    ):
        with pytest.raises(DestinationRefused):
            check_webhook_url(url, none)
    assert check_webhook_url("http://127.0.0.1:8080/hook", AllowList.parse(["127.0.0.1/32"]))
    # A name might resolve into an allowed network: with an allow-list, connect time decides.
    assert check_webhook_url("http://localhost:3000/hook", AllowList.parse(["127.0.0.0/8"]))


class _Recorder(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.connected: list[str] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ASYNC109
        self.connected.append(host)
        raise httpcore.ConnectError("recorded, not connected")


async def test_resolver_step_refuses_a_name_resolving_to_a_private_address_at_connect_time():
    answers = {"rebind.example": ["10.0.0.8"], "public.example": ["93.184.216.34"]}
    resolved: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return answers[host]

    inner = _Recorder()
    backend = GuardedNetworkBackend(AllowList(), resolver=resolver, inner=inner)
    with pytest.raises(httpcore.ConnectError) as refused:
        await backend.connect_tcp("rebind.example", 443)
    assert isinstance(refused.value.__cause__, DestinationRefused)
    assert inner.connected == []  # never reached the network

    # A public answer: the connection goes to the validated IP literal, not to the name again.
    with pytest.raises(httpcore.ConnectError, match="recorded"):
        await backend.connect_tcp("public.example", 443)
    assert inner.connected == ["93.184.216.34"]
    assert resolved == ["rebind.example", "public.example"]  # resolved exactly once per connection

    allowed = GuardedNetworkBackend(AllowList.parse(["10.0.0.0/8"]), resolver=resolver, inner=inner)
    assert await allowed.resolve_checked("rebind.example", 443) == ["10.0.0.8"]
