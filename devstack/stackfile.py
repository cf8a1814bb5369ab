"""`stack.json`: how to reach a running dev stack (URLs, keys, addresses). Written by `x402-dev` once
everything is up and removed when it stops, so its presence means a stack was running; the `x402` client
takes its defaults from it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

DEFAULT_DATA_DIR = Path(".x402-dev")
DEFAULT_STACK_FILE = DEFAULT_DATA_DIR / "stack.json"


class StackFileError(RuntimeError):
    pass


def write_stack_file(path: Path, document: dict[str, Any]) -> None:
    # Readers poll for the file: rename makes it appear complete or not at all. 0600: it holds keys.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    os.replace(tmp, path)


def read_stack_file(path: Path = DEFAULT_STACK_FILE) -> dict[str, Any] | None:
    """The document, or None when no stack file exists."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StackFileError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise StackFileError(f"{path} does not hold a JSON object")
    return document


def remove_stack_file(path: Path) -> None:
    path.unlink(missing_ok=True)
