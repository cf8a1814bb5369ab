"""Gateway paths: the path that is priced is the path the upstream gets, with dot segments resolved once and
anything an upstream could read as another path refused."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from resource_server.app import GatewayApp
from resource_server.gateway import PathRejected, ProxyApp, normalize_path


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (b"/", b"/"),
        (b"/api/expensive", b"/api/expensive"),
        (b"/x/../api/expensive", b"/api/expensive"),
        (b"/x/./y/../api/", b"/x/api/"),
        (b"/api//expensive", b"/api/expensive"),
        (b"//api/expensive", b"/api/expensive"),
        (b"/a/b/..", b"/a/"),
        (b"/a/..", b"/"),
        (b"/a/.", b"/a/"),
        (b"/files/a%20b", b"/files/a%20b"),  # other escapes stay as sent
        (b"/a/..;x/b", b"/a/..;x/b"),  # not a dot segment
    ],
)
def test_dot_segments_are_resolved_once(raw: bytes, clean: bytes) -> None:
    assert normalize_path(raw) == clean
    assert normalize_path(clean) == clean


@pytest.mark.parametrize(
    "raw",
    [
        b"/../admin",
        b"/a/../../admin",
        b"/./..",
        b"/a/%2e%2e/b",
        b"/a/.%2E/b",
        b"/a%2fb",
        b"/a%2F..%2Fb",
        b"/a\\..\\b",
        b"/a%5cb",
        b"/a%00.json",
        b"/a\x00",
        b"api/expensive",
    ],
)
def test_paths_an_upstream_could_read_otherwise_are_refused(raw: bytes) -> None:
    with pytest.raises(PathRejected):
        normalize_path(raw)


def http_scope(raw_path: bytes, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": raw_path,
        "query_string": b"n=1",
        "headers": [(b"host", b"gw.test")],
        "client": ("192.0.2.7", 5000),
        "scheme": "http",
    }


async def call(app: Any, scope: dict[str, Any]) -> tuple[int, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(int(m["status"]) for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_the_paid_app_sees_the_path_the_upstream_gets() -> None:
    seen: list[tuple[str, bytes]] = []

    async def paid(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["path"], scope["raw_path"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gateway = GatewayApp(None, Starlette(), paid)  # type: ignore[arg-type]
    assert await call(gateway, http_scope(b"/x/../api/a%20b", "/x/../api/a b")) == (204, b"")
    assert seen == [("/api/a b", b"/api/a%20b")]

    for raw in (b"/../admin", b"/x/%2e%2e/api/expensive"):
        status, body = await call(gateway, http_scope(raw, raw.decode()))
        assert status == 400 and orjson.loads(body)["error"] == "invalid_path", body
    assert len(seen) == 1  # refused before pricing


async def test_the_proxy_forwards_only_a_normalised_path_under_its_base() -> None:
    urls: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))

    proxy = ProxyApp("http://up.test/base/", transport=httpx.MockTransport(upstream))
    assert await call(proxy, http_scope(b"/api/a%20b", "/api/a b")) == (200, b"ok")
    assert urls == ["http://up.test/base/api/a%20b?n=1"]
    # A scope that did not come through normalized_scope: priced as one path, it would reach another.
    for raw in (b"/x/../api/expensive", b"/../admin"):
        status, body = await call(proxy, http_scope(raw, raw.decode()))
        assert status == 400 and orjson.loads(body)["error"] == "invalid_path", body
    assert len(urls) == 1
    await proxy.aclose()
