"""Who may see a job. Pure: a server secret, ids, times and header values in; verdicts out.

Three credentials, none stored:

- the job token, returned once at creation: HMAC(secret, job id). Checking it needs no database read, so
  a wrong token is refused in the same time whether or not the job exists (no existence oracle).
- a signed result link: HMAC(secret, job id + expiry), for handing a download to something that should
  not hold the job token (a browser, a player). It only opens the result, and only until it expires.
- the payer's own signature: EIP-191 `personal_sign` over "x402-job:<job id>:<unix seconds>", sent as
  `X-Job-Auth: <unix seconds>.<signature>`, valid for a short window around that time. It proves
  control of the address that paid, so a payer who lost the token still reaches their jobs. EOAs only:
  a smart-wallet payer (ERC-1271) uses the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from eth_utils.crypto import keccak

from shared.evm.signatures import SignatureError, parse_ecdsa, parse_hex, recover_signer

TOKEN_HEADER = "x-job-token"
PAYER_AUTH_HEADER = "x-job-auth"

_TOKEN_CONTEXT = b"x402-job-token\x00"
_LINK_CONTEXT = b"x402-job-result\x00"
_DIGITS = re.compile(r"[0-9]{1,12}")
_SIG_HEX = re.compile(r"[0-9a-f]{64}")


def job_token(secret: bytes, job_id: UUID) -> str:
    mac = hmac.new(secret, _TOKEN_CONTEXT + job_id.bytes, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def token_matches(secret: bytes, job_id: UUID, token: str) -> bool:
    return hmac.compare_digest(job_token(secret, job_id).encode(), token.encode("utf-8", "replace"))


# -- signed result links ---------------------------------------------------------------------------------


class LinkVerdict(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"  # genuine, but past its expiry
    INVALID = "invalid"  # not ours (or malformed): indistinguishable from an unknown job


@dataclass(frozen=True, slots=True)
class SignedLink:
    expires: int  # unix seconds
    signature: str  # hex

    def query(self) -> str:
        return f"expires={self.expires}&sig={self.signature}"


def _link_mac(secret: bytes, job_id: UUID, expires: int) -> str:
    message = _LINK_CONTEXT + job_id.bytes + str(expires).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_result_link(secret: bytes, job_id: UUID, *, now: float, ttl_seconds: int) -> SignedLink:
    expires = int(now) + ttl_seconds
    return SignedLink(expires, _link_mac(secret, job_id, expires))


def check_result_link(
    secret: bytes, job_id: UUID, expires: str, signature: str, *, now: float
) -> LinkVerdict:
    if not _DIGITS.fullmatch(expires) or not _SIG_HEX.fullmatch(signature):
        return LinkVerdict.INVALID
    if not hmac.compare_digest(_link_mac(secret, job_id, int(expires)), signature):
        return LinkVerdict.INVALID
    return LinkVerdict.VALID if now < int(expires) else LinkVerdict.EXPIRED


# -- the payer's signature -------------------------------------------------------------------------------


def payer_auth_message(job_id: UUID, timestamp: int) -> str:
    return f"x402-job:{job_id}:{timestamp}"


def eip191_digest(message: str) -> bytes:
    data = message.encode()
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)


def recover_payer(header: str, job_id: UUID, *, now: float, window_seconds: float) -> str | None:
    """The checksummed address that signed this job's auth message within the window; None otherwise
    (malformed, stale, from the future beyond the window, or not a valid low-s ECDSA signature)."""
    timestamp, dot, signature = header.strip().partition(".")
    if not dot or not _DIGITS.fullmatch(timestamp):
        return None
    if abs(now - int(timestamp)) > window_seconds:
        return None
    try:
        sig = parse_ecdsa(parse_hex(signature, what="X-Job-Auth signature"))
        return recover_signer(eip191_digest(payer_auth_message(job_id, int(timestamp))), sig)
    except SignatureError:
        return None
