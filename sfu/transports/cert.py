"""The node's TLS certificate for QUIC and WebTransport.

Browsers accept a self-signed certificate for WebTransport only through
``serverCertificateHashes``, and only an ECDSA one valid for less than 14 days (W3C
WebTransport §"custom certificate requirements"). So by default the node makes its own: P-256,
valid 13 days, renewed by restarting or by ``ensure_fresh`` before it runs out. A deployment
with a CA-signed certificate passes files instead.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 13
RENEW_BEFORE = datetime.timedelta(days=2)


@dataclass(frozen=True, slots=True)
class NodeCertificate:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    generated: bool
    hosts: tuple[str, ...] = ()  # names a generated certificate is for (kept for renewal)

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the DER certificate: what ``serverCertificateHashes`` wants."""
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).digest()

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def due_for_renewal(self, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.UTC)
        return self.generated and self.not_after - now < RENEW_BEFORE


def self_signed(hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
                days: int = VALID_DAYS) -> NodeCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sfu node")])
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # A little slack before "now" for clients whose clock runs behind; the whole
            # span stays under the 14 days browsers allow.
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(key, hashes.SHA256()))
    return NodeCertificate(cert, key, generated=True, hosts=hosts)


def load(cert_file: str, key_file: str) -> NodeCertificate:
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file}: WebTransport certificates must be ECDSA")
    return NodeCertificate(cert, key, generated=False)
