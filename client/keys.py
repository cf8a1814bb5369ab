"""Where the payer's private key comes from: an environment variable or x402-dev's stack.json, never a
command-line argument (argv lands in shell history and is readable by every user through ps)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DEFAULT_KEY_ENV = "X402_PRIVATE_KEY"
STACK_KEY_FIELD = "payer_private_key"

_KEY = re.compile(r"(0x)?[0-9a-fA-F]{64}")
# secp256k1 group order: keys must lie in [1, n-1].
_CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class KeyUnavailable(ValueError):
    """No usable key; the message says where it was looked for (never the key itself)."""


def load_private_key(
    *,
    environ: Mapping[str, str],
    stack: Mapping[str, Any],
    stack_name: str,
    key_env: str | None = None,
    stack_explicit: bool = False,
) -> tuple[str, str]:
    """(key as 0x-hex, where it came from). An explicit --key-env or --stack is the only source tried;
    otherwise $X402_PRIVATE_KEY, then the stack file."""
    if key_env is not None:
        return _checked(environ.get(key_env), f"${key_env}", missing=f"${key_env} is not set")
    from_stack = stack.get(STACK_KEY_FIELD)
    if stack_explicit:
        return _checked(from_stack, stack_name, missing=f"{stack_name} has no {STACK_KEY_FIELD}")
    if environ.get(DEFAULT_KEY_ENV):
        return _checked(environ[DEFAULT_KEY_ENV], f"${DEFAULT_KEY_ENV}", missing="")
    if from_stack is not None:
        return _checked(from_stack, stack_name, missing="")
    raise KeyUnavailable(
        f"no private key: set ${DEFAULT_KEY_ENV} (or name another variable with --key-env), "
        f"or start x402-dev so that {stack_name} exists"
    )


def _checked(value: Any, source: str, *, missing: str) -> tuple[str, str]:
    if not value:
        raise KeyUnavailable(missing)
    if not isinstance(value, str) or not _KEY.fullmatch(value.strip()):
        raise KeyUnavailable(f"the key in {source} is not 32 bytes of hex")
    key = value.strip().removeprefix("0x")
    if not 0 < int(key, 16) < _CURVE_ORDER:
        raise KeyUnavailable(f"the key in {source} is not a valid secp256k1 private key")
    return "0x" + key.lower(), source
