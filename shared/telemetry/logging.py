"""structlog setup: one JSON line per event, with secrets scrubbed before anything is written.

Both structlog loggers and plain ``logging`` loggers (uvicorn, asyncpg, libraries) end in
the same handler, and redaction runs last before rendering, so no path skips it. Run
uvicorn with ``log_config=None`` so it does not install handlers of its own.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"

# Matched against the key lower-cased with separators removed, so "X-API-Key",
# "api_key" and "apiKey" are all caught.
_SECRET_KEY_PARTS = (
    "privatekey",
    "apikey",
    "authorization",
    "password",
    "passwd",
    "secret",
    "signature",
    "mnemonic",
    "seedphrase",
    "credential",
    "accesstoken",
    "refreshtoken",
    "cookie",
    "xpayment",
)
# Keys that merely describe a secret ("signature_type", "password_present") stay readable.
_DESCRIPTIVE_SUFFIXES = ("type", "kind", "valid", "length", "len", "count", "scheme", "format", "present")
# Transaction hashes and EIP-3009 nonces are 32 bytes too, but public, and operators need
# them to trace a settlement; under these keys a 64-hex value is kept.
_PUBLIC_HEX_KEYS = frozenset(
    {"tx", "txhash", "transaction", "transactionhash", "hash", "blockhash", "nonce", "topic"}
)
_HEX32 = re.compile(r"(?<![0-9a-fA-F])(?:0x)?[0-9a-fA-F]{64}(?![0-9a-fA-F])")
# postgresql://user:password@host -> postgresql://user:[REDACTED]@host
# (a "/" cannot occur in a URL password unencoded, so "host:8080/a@b" is left alone)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
_MAX_DEPTH = 8


def _normalise(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def is_secret_key(key: str) -> bool:
    norm = _normalise(key)
    if norm.endswith(_DESCRIPTIVE_SUFFIXES):
        return False
    return any(part in norm for part in _SECRET_KEY_PARTS)


def redact_text(text: str) -> str:
    """Scrub 32-byte hex strings (private-key shaped) and URL passwords from free text."""
    text = _HEX32.sub(REDACTED, text)
    return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)


def _redact_value(value: Any, key: str, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if is_secret_key(key):
        return REDACTED
    if isinstance(value, int | float):
        return value
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, str):
        if _normalise(key) in _PUBLIC_HEX_KEYS:
            return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", value)
        return redact_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        # Raw 32 bytes (HexBytes included) may be a private key.
        if len(value) == 32 and _normalise(key) not in _PUBLIC_HEX_KEYS:
            return REDACTED
        return redact_text(repr(value))
    if isinstance(value, Mapping):
        return {str(k): _redact_value(v, str(k), depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item, key, depth + 1) for item in value]
    # Renderers would repr() unknown objects anyway; scrub that text instead of trusting it.
    return redact_text(repr(value))


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace secret-named fields and secret-looking values."""
    return {key: _redact_value(value, key, 0) for key, value in event_dict.items()}


def configure_logging(level: str = "INFO", json: bool = True, *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr by default) through redaction.

    stderr keeps stdout free for CLI output. Calling it again replaces the previous setup.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text first so exception messages are scrubbed too.
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pgserver logs every command line and status poll at INFO.
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request at INFO: one line per RPC call would drown everything else.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached so a later configure_logging (tests, CLI flags) reaches every logger.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
