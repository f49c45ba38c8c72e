"""The pilot's certificate authority: a root (made at start-up, or one given to it) that
signs short-lived workload certificates carrying one SPIFFE identity each,
`spiffe://<trust-domain>/ns/<namespace>/sa/<service account>` as Istio's Citadel issues
them (URI SAN, no CN required, client and server auth). The root's key stays in this
process: sidecars get their own certificate and key (pilot/sds.py) and the root
certificate, never the signing key.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_TTL = 24 * 3600.0
ROOT_DAYS = 3650
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


class CaError(ValueError):
    pass


@dataclass(frozen=True)
class Issued:
    spiffe_id: str
    cert_pem: bytes  # the leaf (a peer verifies it against the root, SDS secret ROOTCA)
    key_pem: bytes
    not_before: float  # unix seconds
    not_after: float
    serial: int


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    for what, v in (("namespace", namespace), ("service account", service_account)):
        if not _SEGMENT.match(v or ""):
            raise CaError(f"{what} {v!r} cannot be part of a SPIFFE id")
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    def __init__(
        self,
        trust_domain: str = "cluster.local",
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        if not _SEGMENT.match(trust_domain):
            raise CaError(f"trust domain {trust_domain!r} is not a DNS-like name")
        self.trust_domain = trust_domain
        self.ttl = float(ttl)
        if self.ttl < 1:
            raise CaError("certificate TTL must be at least 1 s")
        if (cert_pem is None) != (key_pem is None):
            raise CaError("a CA certificate needs its key, and a key its certificate")
        if cert_pem is None:
            self._key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sofamesh"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"sofamesh root CA {trust_domain}"),
                ]
            )
            self.cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(self._key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - dt.timedelta(minutes=5))
                .not_valid_after(_now() + dt.timedelta(days=ROOT_DAYS))
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
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                    critical=False,
                )
                .sign(self._key, hashes.SHA256())
            )
        else:
            try:
                self.cert = x509.load_pem_x509_certificate(cert_pem)
                key = serialization.load_pem_private_key(key_pem, password=None)  # type: ignore[arg-type]
            except ValueError as e:
                raise CaError(f"cannot read the CA certificate or key: {e}") from None
            if key.public_key().public_numbers() != self.cert.public_key().public_numbers():  # type: ignore[union-attr]
                raise CaError("the CA key does not match the CA certificate")
            self._key = key  # type: ignore[assignment]
        self.root_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.issued = 0

    def issue(
        self,
        spiffe: str,
        ttl: float | None = None,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        public_key=None,
    ) -> Issued:
        """A new key and a certificate for one SPIFFE id, valid for `ttl` seconds (`dns`,
        `ips`: extra SANs, for the pilot's own server certificate). With `public_key` (a
        workload's certificate request, pilot/bootstrap.py) the certificate is for that key,
        which never leaves the workload: `key_pem` is empty."""
        import ipaddress

        life = self.ttl if ttl is None else float(ttl)
        key = ec.generate_private_key(ec.SECP256R1()) if public_key is None else None
        subject_key = key.public_key() if key is not None else public_key
        start = _now() - dt.timedelta(seconds=min(60.0, life / 10))  # clock skew
        end = _now() + dt.timedelta(seconds=life)
        end = min(end, self.cert.not_valid_after_utc)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sofamesh")]))
            .issuer_name(self.cert.subject)
            .public_key(subject_key)
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe),
                        *(x509.DNSName(d) for d in dns),
                        *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips),
                    ]
                ),
                critical=True,  # the subject is empty: the SAN is the identity (RFC 5280)
            )
            .sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        )
        self.issued += 1
        return Issued(
            spiffe,
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            if key is not None
            else b"",
            start.timestamp(),
            end.timestamp(),
            serial,
        )
