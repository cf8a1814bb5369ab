"""A facilitator in a process of its own (`python -m facilitator.cli`), for tests that SIGKILL it, and
settling over HTTP against it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import httpx

from shared.devchain.chain import DevChain
from tests.fixtures.facilitator import API_KEY, free_port


class FacilitatorProcess:
    def __init__(self, dev_chain: DevChain, dsn: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "X402_NETWORK": dev_chain.network,
            "X402_RPC_URLS": dev_chain.rpc_url,
            "X402_SIGNER_KEYS": ",".join(dev_chain.facilitator_keys),
            "X402_API_KEYS": API_KEY,
            "DATABASE_URL": dsn,
            "X402_PORT": str(self.port),
            "X402_SETTLE_LEASE_SECONDS": "2",
            "X402_RECONCILE_INTERVAL_SECONDS": "0.5",
            "X402_LOG_LEVEL": "WARNING",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "facilitator.cli"], env=self.env)
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                try:
                    if (await http.get(self.url + "/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.proc.poll() is None, "facilitator exited during start-up"
                await asyncio.sleep(0.05)
        raise RuntimeError("facilitator did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


async def settle(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /settle with the test API key; the JSON answer."""
    async with httpx.AsyncClient(timeout=30.0) as http:
        resp = await http.post(url + "/settle", json=body, headers={"authorization": f"Bearer {API_KEY}"})
        result: dict[str, Any] = resp.json()
        return result
