"""Start and stop Anvil (Foundry's local EVM node) as a child process."""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from shared.child_process import die_with_parent
from shared.devchain.constants import BASE_SEPOLIA_CHAIN_ID

REPO_ROOT = Path(__file__).resolve().parents[2]
# npm installs exactly one platform package (anvil-linux-amd64, anvil-darwin-arm64, ...) next to the shim.
_NPM_SCOPE = REPO_ROOT / "node_modules" / "@foundry-rs"
_HOST = "127.0.0.1"

_live: set[AnvilProcess] = set()


class AnvilError(RuntimeError):
    pass


def find_anvil() -> Path:
    """$ANVIL_BIN if set, else the binary that `npm ci` put under node_modules."""
    configured = os.environ.get("ANVIL_BIN")
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise AnvilError(f"ANVIL_BIN={configured} is not a file")
        return path
    for candidate in sorted(_NPM_SCOPE.glob("anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return candidate
    raise AnvilError(f"no Anvil binary under {_NPM_SCOPE}/anvil-*/bin: run `npm ci` or set ANVIL_BIN")


class AnvilProcess:
    """A running Anvil. Stop it with stop(), or use it as a context manager."""

    def __init__(self, popen: subprocess.Popen[bytes], port: int, chain_id: int, stderr: IO[bytes]) -> None:
        self._popen = popen
        self._stderr = stderr
        self.port = port
        self.chain_id = chain_id
        self.rpc_url = f"http://{_HOST}:{port}"

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if Anvil has not exited within `timeout` seconds. Idempotent."""
        if self.running:
            self._popen.terminate()
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        self._release()

    def kill(self) -> None:
        """SIGKILL, e.g. to test how callers cope with a node that vanishes."""
        if self.running:
            self._popen.kill()
            self._popen.wait()
        self._release()

    def _release(self) -> None:
        _live.discard(self)
        self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"AnvilProcess(pid={self.pid}, rpc_url={self.rpc_url!r}, chain_id={self.chain_id})"


def start_anvil(
    *,
    port: int | None = None,
    chain_id: int = BASE_SEPOLIA_CHAIN_ID,
    block_time: float | None = None,
    gas_limit: int | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 15.0,
) -> AnvilProcess:
    """Start Anvil and return once it answers JSON-RPC with the expected chain id.

    Without `block_time` Anvil mines one block per transaction (automine). With `port=None` a free port is
    chosen; since another process may grab it between the check and Anvil's bind, that case is retried.
    """
    binary = find_anvil()
    if port is not None and not _port_is_free(port):
        # Checked up front because a node already on that port would answer our readiness probe.
        raise AnvilError(f"port {port} on {_HOST} is already in use")
    attempts = 3 if port is None else 1
    for attempt in range(attempts):
        chosen = port if port is not None else _free_port()
        args = [str(binary), "--host", _HOST, "--port", str(chosen), "--chain-id", str(chain_id), "--quiet"]
        if block_time is not None:
            args += ["--block-time", _format_seconds(block_time)]
        if gas_limit is not None:
            args += ["--gas-limit", str(gas_limit)]
        args += list(extra_args)
        try:
            return _launch(args, chosen, chain_id, startup_timeout)
        except AnvilError as exc:
            if "Address already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _launch(args: list[str], port: int, chain_id: int, timeout: float) -> AnvilProcess:
    # A file rather than a pipe: nobody drains a pipe while Anvil runs, and a full pipe would block it.
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process; closed by stop()
    popen = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    process = AnvilProcess(popen, port, chain_id, stderr)
    _live.add(process)
    try:
        _wait_until_ready(process, timeout)
    except BaseException:
        process.kill()
        raise
    return process


def _wait_until_ready(process: AnvilProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    with httpx.Client(timeout=1.0) as http:
        while True:
            if not process.running:
                raise AnvilError(
                    f"Anvil exited with code {process.returncode} during start-up: "
                    f"{process.stderr_text().strip() or '(no stderr)'}"
                )
            try:
                answer = http.post(process.rpc_url, json=body).json()
            except (httpx.TransportError, ValueError):
                answer = None
            if answer is not None:
                reported = int(answer["result"], 16)
                if reported != process.chain_id:
                    # Another node grabbed the port between our check and Anvil's bind.
                    raise AnvilError(f"{process.rpc_url} reports chain id {reported}, not {process.chain_id}")
                return
            if time.monotonic() > deadline:
                raise AnvilError(
                    f"Anvil did not answer on {process.rpc_url} within {timeout}s; stderr: "
                    f"{process.stderr_text().strip() or '(empty)'}"
                )
            time.sleep(0.02)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like Anvil's own listener: a port in TIME_WAIT is usable, only a live listener blocks it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _format_seconds(seconds: float) -> str:
    # "2" rather than "2.0": integral values stay valid for Anvil builds that only parse integers.
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


@atexit.register
def _stop_leftovers() -> None:
    # An interrupted test run must not leave Anvils holding ports; SIGKILL of Python still can.
    for process in list(_live):
        process.kill()
