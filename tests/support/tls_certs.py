"""A throwaway certificate authority for TLS tests, built with pycryptodome (already a dependency) since
neither trustme nor cryptography is installed: ECDSA P-256 keys and minimal DER-encoded X.509 v3
certificates with the extensions OpenSSL's strict verification wants (key identifiers, key usage).

    ca = TestCA("Test CA")
    leaf = ca.issue("hooks.example.test")
    server_ctx = leaf.server_context(); client_ctx = ca.client_context()"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from Crypto.Hash import SHA256
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS

_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
_COMMON_NAME = "2.5.4.3"
_SUBJECT_KEY_ID = "2.5.29.14"
_KEY_USAGE = "2.5.29.15"
_SUBJECT_ALT_NAME = "2.5.29.17"
_BASIC_CONSTRAINTS = "2.5.29.19"
_AUTHORITY_KEY_ID = "2.5.29.35"
_EXT_KEY_USAGE = "2.5.29.37"
_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # +1: a leading 0 keeps it positive


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(p) for p in dotted.split("."))
    out = bytearray([40 * first + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _name(common_name: str) -> bytes:
    return _seq(_tlv(0x31, _seq(_oid(_COMMON_NAME), _tlv(0x0C, common_name.encode()))))


def _time(moment: datetime) -> bytes:
    return _tlv(0x17, moment.strftime("%y%m%d%H%M%SZ").encode())


def _extension(oid: str, value: bytes, *, critical: bool = False) -> bytes:
    flag = _tlv(0x01, b"\xff") if critical else b""
    return _seq(_oid(oid), flag, _tlv(0x04, value))


def _key_id(key: ECC.EccKey) -> bytes:
    return hashlib.sha1(key.public_key().export_key(format="DER")).digest()


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: str
    key_pem: str

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_text(self.cert_pem)
        key.write_text(self.key_pem)
        return cert, key

    def server_context(self, directory: Path, stem: str = "server") -> ssl.SSLContext:
        cert, key = self.write(directory, stem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        return ctx


class TestCA:
    __test__ = False  # not a pytest test class despite the name

    def __init__(self, common_name: str = "x402 test CA") -> None:
        self.name = common_name
        self.key = ECC.generate(curve="P-256")
        ski = _key_id(self.key)
        self.cert_pem = _pem(
            self._sign(
                subject=common_name,
                public=self.key,
                extensions=[
                    _extension(_BASIC_CONSTRAINTS, _seq(_tlv(0x01, b"\xff")), critical=True),  # CA:TRUE
                    # digitalSignature, keyCertSign, cRLSign
                    _extension(_KEY_USAGE, _tlv(0x03, b"\x01\x86"), critical=True),
                    _extension(_SUBJECT_KEY_ID, _tlv(0x04, ski)),
                ],
            )
        )

    def issue(self, *dns_names: str) -> IssuedCert:
        """A server certificate for `dns_names` (the first is also the subject's CN)."""
        key = ECC.generate(curve="P-256")
        sans = b"".join(_tlv(0x82, name.encode()) for name in dns_names)  # [2] dNSName
        der = self._sign(
            subject=dns_names[0],
            public=key,
            extensions=[
                _extension(_BASIC_CONSTRAINTS, _seq(), critical=True),  # CA:FALSE
                _extension(_KEY_USAGE, _tlv(0x03, b"\x07\x80"), critical=True),  # digitalSignature
                _extension(_EXT_KEY_USAGE, _seq(_oid(_SERVER_AUTH))),
                _extension(_SUBJECT_ALT_NAME, _seq(sans)),
                _extension(_SUBJECT_KEY_ID, _tlv(0x04, _key_id(key))),
                _extension(_AUTHORITY_KEY_ID, _seq(_tlv(0x80, _key_id(self.key)))),  # [0] keyIdentifier
            ],
        )
        return IssuedCert(_pem(der), key.export_key(format="PEM"))

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only, with hostname checking on (the defaults)."""
        return ssl.create_default_context(cadata=self.cert_pem)

    def _sign(self, *, subject: str, public: ECC.EccKey, extensions: list[bytes]) -> bytes:
        now = datetime.now(UTC)
        algorithm = _seq(_oid(_ECDSA_WITH_SHA256))
        tbs = _seq(
            _tlv(0xA0, _int(2)),  # version v3
            _int(secrets.randbits(63) + 1),
            algorithm,
            _name(self.name),
            _seq(_time(now - timedelta(hours=1)), _time(now + timedelta(days=1))),
            _name(subject),
            public.public_key().export_key(format="DER"),  # SubjectPublicKeyInfo
            _tlv(0xA3, _seq(*extensions)),
        )
        signature = DSS.new(self.key, "fips-186-3", encoding="der").sign(SHA256.new(tbs))
        return _seq(tbs, algorithm, _tlv(0x03, b"\x00" + signature))
