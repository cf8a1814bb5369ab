"""Async JSON-RPC over HTTP with ordered failover across several endpoint URLs.

Plain pre-encoded requests through one pooled httpx client: web3.py's middleware stack costs ~10x per
call on the verify/settle hot path (see README, Performance)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import orjson

from shared.rpc.errors import RpcError, RpcUnavailable
from shared.telemetry.tracing import span

Observer = Callable[[str, str, float, bool], None]  # (endpoint, method, seconds, ok)

_RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class _Endpoint:
    __slots__ = ("down_until", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.down_until = 0.0


class JsonRpcClient:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 5.0,
        cooldown: float = 10.0,
        max_connections: int = 64,
        observer: Observer | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one RPC URL is required")
        self._endpoints = [_Endpoint(u) for u in urls]
        self._cooldown = cooldown
        self._observer = observer
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"content-type": "application/json"},
        )

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self._endpoints]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, params: list[Any] | None = None) -> Any:
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params or []}
        )
        reply = await self._post(body, method)
        if not isinstance(reply, dict):
            raise RpcError(-32603, f"unexpected JSON-RPC reply to {method}")
        return _result(reply)

    async def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Results in call order; a failed call's slot holds its RpcError instead of raising."""
        if not calls:
            return []
        first = next(self._ids)
        requests = [
            {"jsonrpc": "2.0", "id": first + i, "method": m, "params": p} for i, (m, p) in enumerate(calls)
        ]
        # Reserve the ids we used so concurrent requests never share one.
        for _ in range(len(calls) - 1):
            next(self._ids)
        reply = await self._post(orjson.dumps(requests), "batch")
        if not isinstance(reply, list):
            if isinstance(reply, dict) and "error" in reply:
                raise _error(reply["error"])
            raise RpcError(-32603, "unexpected JSON-RPC batch reply")
        by_id = {r.get("id"): r for r in reply if isinstance(r, dict)}
        out: list[Any] = []
        for i in range(len(calls)):
            r = by_id.get(first + i)
            if r is None:
                out.append(RpcError(-32603, "missing reply in batch"))
                continue
            try:
                out.append(_result(r))
            except RpcError as exc:
                out.append(exc)
        return out

    async def _post(self, body: bytes, method: str) -> Any:
        async with span("rpc", **{"rpc.method": method}):
            return await self._post_failover(body, method)

    async def _post_failover(self, body: bytes, method: str) -> Any:
        now = time.monotonic()
        live = [e for e in self._endpoints if e.down_until <= now]
        # When every endpoint is cooling down, try them all anyway rather than fail without asking.
        candidates = live or self._endpoints
        last: Exception | None = None
        for endpoint in candidates:
            started = time.perf_counter()
            try:
                resp = await self._http.post(endpoint.url, content=body)
                if resp.status_code in _RETRYABLE_STATUS:
                    raise httpx.HTTPStatusError(
                        f"HTTP {resp.status_code}", request=resp.request, response=resp
                    )
                reply = orjson.loads(resp.content)
            except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
                endpoint.down_until = time.monotonic() + self._cooldown
                last = exc
                self._observe(endpoint.url, method, started, False)
                continue
            endpoint.down_until = 0.0
            self._observe(endpoint.url, method, started, True)
            return reply
        raise RpcUnavailable(f"no RPC endpoint answered {method}: {type(last).__name__}: {last}")

    def _observe(self, url: str, method: str, started: float, ok: bool) -> None:
        if self._observer is not None:
            self._observer(url, method, time.perf_counter() - started, ok)


def _error(err: Any) -> RpcError:
    if isinstance(err, dict):
        return RpcError(int(err.get("code", -32603)), str(err.get("message", "")), err.get("data"))
    return RpcError(-32603, str(err))


def _result(reply: dict[str, Any]) -> Any:
    if "error" in reply and reply["error"] is not None:
        raise _error(reply["error"])
    return reply.get("result")
