"""`x402 pay` before anything is sent: where the key comes from, argument checking, usage exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from client.cli import main
from client.keys import KeyUnavailable, load_private_key

KEY = "0x" + "42" * 32
OTHER = "0x" + "43" * 32


def load(
    environ: dict[str, str] | None = None, stack: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[str, str]:
    return load_private_key(environ=environ or {}, stack=stack or {}, stack_name="stack.json", **kwargs)


def test_key_sources_in_order():
    assert load({"X402_PRIVATE_KEY": KEY}, {"payer_private_key": OTHER}) == (KEY, "$X402_PRIVATE_KEY")
    assert load({}, {"payer_private_key": OTHER}) == (OTHER, "stack.json")
    assert load({"MINE": KEY.upper().replace("0X", "0x")}, {}, key_env="MINE") == (KEY, "$MINE")
    # An explicit source is the only one tried.
    assert load({"X402_PRIVATE_KEY": KEY}, {"payer_private_key": OTHER}, stack_explicit=True)[0] == OTHER
    with pytest.raises(KeyUnavailable, match=r"^\$MINE is not set$"):
        load({"X402_PRIVATE_KEY": KEY}, key_env="MINE")
    with pytest.raises(KeyUnavailable, match=r"stack\.json has no payer_private_key"):
        load({"X402_PRIVATE_KEY": KEY}, stack_explicit=True)
    with pytest.raises(KeyUnavailable, match="no private key: set"):
        load()


@pytest.mark.parametrize("bad", ["0x1234", "zz" * 32, "0x" + "00" * 32, "0x" + "ff" * 32, 7])
def test_bad_keys_are_refused_without_echoing_them(bad):
    with pytest.raises(KeyUnavailable) as caught:
        load({}, {"payer_private_key": bad})
    assert str(bad) not in str(caught.value)


def x402(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    monkeypatch.delenv("X402_PRIVATE_KEY", raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    try:
        code = main(["--stack", "/nonexistent/stack.json", *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


URL = "http://127.0.0.1:9/paid"  # discard port: nothing may be sent in these tests anyway


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pay", URL], "no private key"),
        (["pay", "ftp://x/y"], "is not an http(s) URL"),
        (["pay", URL, "--max-amount", "0.05", "--max-atomic", "5"], "not allowed with argument"),
        (["pay", URL, "--max-amount", "lots"], "must be a dollar amount"),
        (["pay", URL, "--max-atomic", "1.5"], "must be a non-negative integer"),
        (["pay", URL, "--data", "{not json"], "must be JSON, or @FILE"),
        (["pay", URL, "--data", "@/nonexistent/body.json"], "cannot read"),
        (["pay", URL, "--header", "novalue"], "must be NAME:VALUE"),
        (["pay", URL, "--network", "narnia"], "unknown network 'narnia'"),
        (["pay", URL, "--method", "TRACE"], "invalid choice"),
        (["pay", URL, "--timeout", "0"], "must be a positive number of seconds"),
        (
            ["pay", URL, "--stack", "/nonexistent/other.json"],
            "no x402-dev stack file at /nonexistent/other.json",
        ),
        (["pay", URL, "--key", KEY], "unrecognized arguments"),  # no way to put a key on the command line
        (["pay", URL, "--key-env", KEY], "must be the NAME of an environment variable"),
    ],
)
def test_usage_errors_exit_2(capsys, monkeypatch, argv, message):
    env = {} if message == "no private key" else {"X402_PRIVATE_KEY": KEY}
    code, _, err = x402(capsys, monkeypatch, *argv, env=env)
    assert code == 2, err
    assert message in err
    if "--key-env" in argv:
        assert KEY[2:] not in err  # a key pasted where a variable name belongs is not echoed


def test_verify_receipt_needs_endpoints_before_paying(capsys, monkeypatch):
    code, out, err = x402(
        capsys, monkeypatch, "pay", URL, "--verify-receipt", "--json", env={"X402_PRIVATE_KEY": KEY}
    )
    assert code == 2
    assert "--verify-receipt needs --facilitator and --rpc-url" in err
    assert json.loads(out)["error"]["code"] == "usage"


def test_unreachable_server_exits_3(capsys, monkeypatch):
    code, out, err = x402(
        capsys, monkeypatch, "pay", URL, "--json", "--timeout", "2", env={"X402_PRIVATE_KEY": KEY}
    )
    assert code == 3, err
    document = json.loads(out)
    assert document["ok"] is False and document["payment"] is None
    assert document["error"]["code"] == "unreachable"
