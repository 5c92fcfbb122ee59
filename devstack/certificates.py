"""Throwaway self-signed certificates: the local stack's Graph credential in certificate mode, and the tests'.

Never deployed (devstack/). In Azure, Key Vault makes the certificate from its policy (infra/app/certificate.bicep).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def self_signed(
    subject: str = "mailrelay-graph", *, not_before: datetime | None = None, not_after: datetime | None = None
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA 2048 key and its self-signed certificate, as Key Vault's self-signed policy makes them. By default
    valid from five minutes ago (a host whose clock is a little behind must not see one from the future) for a year."""
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def key_pem(key: rsa.RSAPrivateKey) -> str:
    """The private key, PKCS#8 PEM without a password: what Key Vault's application/x-pem-file secret holds."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def certificate_pem(*certificates: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def sha1_thumbprint(certificate: x509.Certificate) -> str:
    """Upper-case hex SHA-1: the thumbprint the portal shows and Entra names keys by."""
    return certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - Entra's thumbprint is SHA-1
