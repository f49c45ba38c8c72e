"""`x-forwarded-client-cert` (XFCC): HttpConnectionManager `forward_client_cert_details` and
`set_current_client_cert_details`, as Envoy 1.40 applies them to each request before the
filters (the header mutation itself is `_core/http_router.pyx` `_mutate_xfcc`):

    SANITIZE (default)   the client's XFCC is removed
    FORWARD_ONLY         kept on mutual TLS, removed otherwise
    APPEND_FORWARD       on mutual TLS this hop's details are appended (","), else removed
    SANITIZE_SET         on mutual TLS the header is this hop's details, else removed
    ALWAYS_FORWARD_ONLY  kept, whatever the connection

This hop's details (`;`-separated, Envoy's keys and order): `By=` each URI SAN of the
certificate the proxy presented, `Hash=` the SHA-256 of the client certificate (DER, hex),
then as asked: `Cert="..."` (the client certificate's PEM, URL-encoded), `Subject="..."`
(RFC 2253), `URI=` each URI SAN (`URI=` when it has none), `DNS=` each DNS SAN. They are
worked out once per connection. `chain` is refused by name: Python's ssl (3.11) does not
give the chain the client sent.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

SANITIZE, FORWARD_ONLY, APPEND_FORWARD, SANITIZE_SET, ALWAYS_FORWARD_ONLY = range(5)
# Envoy's urlEncodedPemEncodedPeerCertificate replaces these five
_PEM_ESCAPES = str.maketrans({"\n": "%0A", " ": "%20", "+": "%2B", "/": "%2F", "=": "%3D"})


def configure(cfg: Any, hcm: Any, path: str) -> None:
    """Sets `cfg.xfcc` and `cfg.xfcc_details` from an HttpConnectionManager."""
    d = hcm.set_current_client_cert_details
    if d.chain:
        raise UnsupportedConfig(
            f"{path}.set_current_client_cert_details.chain is not implemented by sofamesh "
            "(the chain a client sent is not available to it)"
        )
    cfg.xfcc = hcm.forward_client_cert_details
    kinds = tuple(
        k
        for k, on in (
            ("cert", d.cert),
            ("subject", d.subject.value),
            ("uri", d.uri),
            ("dns", d.dns),
        )
        if on
    )

    def details(transport: Any) -> str | None:
        return client_cert_details(transport, kinds)

    cfg.xfcc_details = details


def client_cert_details(transport: Any, kinds: tuple[str, ...]) -> str | None:
    """This hop's XFCC element for the connection, or None when it is not mutual TLS (no
    TLS, or no client certificate)."""
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return None
    cached = getattr(sslobj, "_sofamesh_xfcc", None)
    if cached is not None and cached[0] == kinds:
        return cached[1]
    der = sslobj.getpeercert(binary_form=True)
    value = None if der is None else _details(sslobj, der, kinds)
    sslobj._sofamesh_xfcc = (kinds, value)
    return value


def _details(sslobj: Any, der: bytes, kinds: tuple[str, ...]) -> str:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    parts = [f"By={u}" for u in getattr(sslobj.context, "_sofamesh_local_uris", ())]
    parts.append("Hash=" + hashlib.sha256(der).hexdigest())
    uris, dns = _sans(cert)
    for k in kinds:
        if k == "cert":
            parts.append('Cert="' + ssl.DER_cert_to_PEM_cert(der).translate(_PEM_ESCAPES) + '"')
        elif k == "subject":
            parts.append('Subject="' + cert.subject.rfc4514_string() + '"')
        elif k == "uri":
            parts += [f"URI={u}" for u in uris] or ["URI="]
        elif k == "dns":
            parts += [f"DNS={n}" for n in dns]
    return ";".join(parts)


def _sans(cert: Any) -> tuple[list[str], list[str]]:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        list(ext.get_values_for_type(x509.UniformResourceIdentifier)),
        list(ext.get_values_for_type(x509.DNSName)),
    )


def local_uris(chain_pem: bytes) -> tuple[str, ...]:
    """The URI SANs of the first certificate of a PEM chain (what `By=` names)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(chain_pem)
    except ValueError:
        return ()
    return tuple(_sans(cert)[0])
