"""`x402-dev` end to end: it comes up, serves a funded payer, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from shared.devchain.anvil import AnvilError, find_anvil

pytestmark = pytest.mark.integration

BALANCE_OF = "0x70a08231"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    try:
        find_anvil()
    except AnvilError as exc:
        pytest.skip(f"no Anvil binary: {exc}")
    # Outside pytest's tmp_path: the embedded PostgreSQL runs as the pgserver user when we are root, and
    # pytest makes its base folder 0700 (see tests/fixtures/database.py).
    root = Path(tempfile.mkdtemp(prefix="x402-devstack-"))
    yield root / "dev"
    shutil.rmtree(root, ignore_errors=True)


def x402_dev() -> list[str]:
    # The installed console script when there is one, so the entry point is covered too.
    script = shutil.which("x402-dev", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "devstack.cli"]


def start(data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir.parent / "x402-dev.out").open("ab")
    proc = subprocess.Popen(
        [*x402_dev(), "--data-dir", str(data_dir), "--port-base", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stack_file = data_dir / "stack.json"
    deadline = time.monotonic() + 60
    while not stack_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"x402-dev did not come up:\n{(data_dir.parent / 'x402-dev.out').read_text()}")
        time.sleep(0.1)
    return proc, json.loads(stack_file.read_text())


def interrupt(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0


def rpc(url: str, method: str, params: list[Any]) -> object:
    answer = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).json()
    return answer["result"]


def answers(url: str) -> bool:
    try:
        httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1)
    except httpx.TransportError:
        return False
    return True


def test_stack_comes_up_and_ctrl_c_stops_everything(data_dir: Path) -> None:
    proc, stack = start(data_dir)
    try:
        assert stack["network"] == "eip155:84532"
        assert stack["chain_id"] == 84532
        assert stack["asset"] == "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
        assert (stack["asset_name"], stack["asset_version"]) == ("USDC", "2")

        assert httpx.get(stack["facilitator_url"] + "/health").json() == {"status": "ok"}
        supported = httpx.get(stack["facilitator_url"] + "/supported").json()
        assert "eip155:84532" in {kind["network"] for kind in supported["kinds"]}

        owner = stack["payer_address"][2:].lower().rjust(64, "0")
        balance = rpc(
            stack["rpc_url"], "eth_call", [{"to": stack["asset"], "data": BALANCE_OF + owner}, "latest"]
        )
        assert int(str(balance), 16) == 1000 * 10**6

        # The resource server sells the demo routes through the stack's facilitator.
        weather = stack["demo_routes"]["fixed_price"]
        unpaid = httpx.request(weather["method"], weather["url"])
        assert unpaid.status_code == 402
        assert "payment-required" in unpaid.headers
        assert unpaid.json()["accepts"][0]["payTo"] == stack["pay_to"]
    finally:
        interrupt(proc)

    assert not answers(stack["rpc_url"])
    assert not answers(stack["facilitator_url"])
    assert not answers(stack["resource_server_url"])
    for name, pid in stack["pids"].items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
    assert not (data_dir / "postgres" / "postmaster.pid").exists()  # PostgreSQL shut down cleanly
    assert not (data_dir / "stack.json").exists()


def test_second_run_on_the_same_data_dir(data_dir: Path) -> None:
    for _ in range(2):
        proc, stack = start(data_dir)
        try:
            assert httpx.get(stack["facilitator_url"] + "/health").status_code == 200
        finally:
            interrupt(proc)
    assert sorted(os.listdir(data_dir / "logs")) == ["facilitator.log", "resource_server.log"]
