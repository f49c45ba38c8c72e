"""Test certificates made on the fly (cryptography): CAs, leaves with DNS/URI/IP SANs,
expired ones, CRLs. Nothing is read from outside the repository."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pair:
    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, directory: Path, name: str) -> tuple[str, str]:
        c, k = directory / f"{name}.crt", directory / f"{name}.key"
        c.write_bytes(self.cert_pem)
        k.write_bytes(self.key_pem)
        return str(c), str(k)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    return Pair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert,
        key,
    )


def make_ca(name: str = "sofamesh test CA") -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(days=1))
        .not_valid_after(_now() + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key)


def make_leaf(
    ca: Pair,
    cn: str = "localhost",
    dns: tuple[str, ...] = ("localhost",),
    uris: tuple[str, ...] = (),
    ips: tuple[str, ...] = ("127.0.0.1",),
    expired: bool = False,
    days: float = 10,
    org: str = "",
    unit: str = "",
) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if unit:
        subject.insert(0, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    if org:
        subject.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if expired:
        start, end = _now() - dt.timedelta(days=10), _now() - dt.timedelta(days=1)
    else:
        start, end = _now() - dt.timedelta(hours=1), _now() + dt.timedelta(days=days)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _pem(b.sign(ca.key, hashes.SHA256()), key)


def make_crl(ca: Pair, revoked: list[Pair]) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(_now() - dt.timedelta(hours=1))
        .next_update(_now() + dt.timedelta(days=1))
    )
    for r in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(r.cert.serial_number)
            .revocation_date(_now() - dt.timedelta(minutes=5))
            .build()
        )
    return b.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
