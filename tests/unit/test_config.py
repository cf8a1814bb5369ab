"""Configuration paths an operator relies on to keep keys out of files and still tune one network."""

from pathlib import Path

import pytest

from facilitator.config import FacilitatorSettings, NetworkSettings

KEY = "0x" + "ab" * 32


def test_network_keys_from_a_named_environment_variable(monkeypatch):
    monkeypatch.setenv("BASE_SIGNER_KEYS", f"{KEY}, 0x{'cd' * 32}")
    net = NetworkSettings(
        network="eip155:8453", rpc_urls=["https://rpc.invalid"], signer_keys_env="BASE_SIGNER_KEYS"
    )
    assert [k.get_secret_value() for k in net.signer_keys] == [KEY, "0x" + "cd" * 32]


def test_single_chain_shortcut_takes_json_network_options(monkeypatch):
    monkeypatch.setenv("X402_NETWORK", "eip155:84532")
    monkeypatch.setenv("X402_RPC_URLS", "https://key-in-path.invalid/abc123,https://b.invalid")
    monkeypatch.setenv("X402_SIGNER_KEYS", KEY)
    monkeypatch.setenv(
        "X402_NETWORK_OPTIONS", '{"receipt_timeout_seconds": 3.5, "max_fee_per_gas_gwei": "7"}'
    )
    settings = FacilitatorSettings()
    (net,) = settings.networks
    assert net.receipt_timeout_seconds == 3.5
    assert str(net.max_fee_per_gas_gwei) == "7"
    assert net.rpc_urls == ["https://key-in-path.invalid/abc123", "https://b.invalid"]
    # RPC URLs often embed provider keys: neither they nor signer keys appear in the settings' repr.
    assert "abc123" not in repr(settings)
    assert KEY[2:] not in repr(settings)


def test_network_options_cannot_be_malformed(monkeypatch):
    monkeypatch.setenv("X402_NETWORK", "eip155:84532")
    monkeypatch.setenv("X402_RPC_URLS", "https://a.invalid")
    monkeypatch.setenv("X402_SIGNER_KEYS", KEY)
    monkeypatch.setenv("X402_NETWORK_OPTIONS", '{"receipt_timeout_seconds": "soon"}')
    with pytest.raises(ValueError, match="receipt_timeout_seconds"):
        FacilitatorSettings()


def test_the_example_file_loads_and_an_old_confirmations_key_is_ignored(monkeypatch):
    # Rows are confirmed on their first receipt: `confirmations` was never read and is no longer a setting,
    # and a file written when it was one must still load.
    example = Path(__file__).parents[2] / "deploy" / "facilitator.example.toml"
    monkeypatch.setenv("X402_CONFIG_FILE", str(example))
    monkeypatch.delenv("X402_NETWORK", raising=False)
    settings = FacilitatorSettings()
    assert [n.network for n in settings.networks] == ["eip155:8453", "eip155:84532"]
    assert "confirmations" not in NetworkSettings.model_fields
    old = NetworkSettings.model_validate(
        {"network": "eip155:8453", "rpc_urls": ["https://rpc.invalid"], "confirmations": 3}
    )
    assert "confirmations" not in old.model_dump()
