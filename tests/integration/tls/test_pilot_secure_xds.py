"""ADS over mutual TLS (`sofamesh pilot --secure-xds`): sidecars reach the pilot with a
bootstrap certificate of its CA (the xds-grpc cluster's UpstreamTlsContext: Envoy 1.40 and
the sofamesh xDS client alike), and the identity the pilot issues them over SDS is the one
their certificate names, whatever their node metadata claims. A client without a
certificate gets no stream."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from sofamesh.pilot.ca import CertificateAuthority, spiffe_id
from tests.conftest import free_port
from tests.integration.pilot.conftest import PilotProcess
from tests.integration.tls.test_pilot_ca import TD, Client, _App, _proc, _Server, sidecar
from tests.support.envoy import admin_get

TLS_UP = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@pytest.fixture
def pki(tmp_path):
    from cryptography.hazmat.primitives import serialization

    ca = CertificateAuthority(TD)
    d = tmp_path / "pki"
    d.mkdir()
    (d / "root.crt").write_bytes(ca.root_pem)
    (d / "root.key").write_bytes(
        ca._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for sa in ("svc-a", "svc-b"):
        issued = ca.issue(spiffe_id(TD, "default", sa))
        (d / f"{sa}.crt").write_bytes(issued.cert_pem)
        (d / f"{sa}.key").write_bytes(issued.key_pem)
    return d


@pytest.fixture
def app():
    import threading

    srv = _Server(("127.0.0.1", 0), _App)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def xds_over_tls(boot: dict, cert: Path, key: Path, root: Path) -> dict:
    """The bootstrap's xds-grpc cluster over mTLS with these certificate files."""
    xds = boot["static_resources"]["clusters"][0]
    assert xds["name"] == "xds-grpc"
    xds["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_UP,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(cert)},
                        "private_key": {"filename": str(key)},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": str(root)}},
                "alpn_protocols": ["h2"],
            },
        },
    }
    return boot


def _secure(boot: dict, d, who: str, claims: str) -> dict:
    """The xds-grpc cluster over mTLS with `who`'s bootstrap certificate; the node claims
    to be service account `claims`."""
    xds_over_tls(boot, d / f"{who}.crt", d / f"{who}.key", d / "root.crt")
    boot["node"]["metadata"]["SERVICE_ACCOUNT"] = claims
    return boot


def _identities(admin: int) -> set[str]:
    st, text = admin_get(admin, "/certs")
    assert st == 200
    return {
        san.get("uri")
        for c in json.loads(text)["certificates"]
        for cert in c["cert_chain"]
        for san in cert["subject_alt_names"]
    }


def call_each_other(ports: dict, admins: dict) -> None:
    """Sidecars a (svc-a) and b (svc-b) reach each other's inbound through their outbound
    listeners within 15 s, each holding only its own identity."""
    ca, cb = Client(ports["a"]["out"]), Client(ports["b"]["out"])
    deadline = time.monotonic() + 15
    while (ca.ok == 0 or cb.ok == 0) and time.monotonic() < deadline:
        ca.request() if ca.ok == 0 else None
        cb.request() if cb.ok == 0 else None
        time.sleep(0.1)
    assert ca.ok and cb.ok, (ca.failed[-3:], cb.failed[-3:])
    assert _identities(admins["a"]) == {spiffe_id(TD, "default", "svc-a")}
    assert _identities(admins["b"]) == {spiffe_id(TD, "default", "svc-b")}


@pytest.mark.parametrize(("kind_a", "kind_b"), [("envoy", "sofamesh"), ("sofamesh", "envoy")])
def test_ads_over_mtls_identity_from_the_certificate(tmp_path, pki, app, kind_a, kind_b):
    d = pki
    pilot = PilotProcess(
        tmp_path / "pilot",
        extra=[
            "--trust-domain",
            TD,
            "--ca-cert",
            str(d / "root.crt"),
            "--ca-key",
            str(d / "root.key"),
            "--secure-xds",
            "true",
        ],
    ).start()
    ports = {s: {"out": free_port(), "in": free_port()} for s in "ab"}
    admins = {s: free_port() for s in "ab"}
    # A's node claims to be svc-b: its certificate says svc-a, and that is what it gets
    boot_a = _secure(
        sidecar("svc-a", "svc-b", pilot, admins["a"], ports["a"], app, ports["b"]["in"], False),
        d,
        "svc-a",
        claims="svc-b",
    )
    boot_b = _secure(
        sidecar("svc-b", "svc-a", pilot, admins["b"], ports["b"], app, ports["a"]["in"], False),
        d,
        "svc-b",
        claims="svc-b",
    )
    a, b = _proc(kind_a, boot_a, tmp_path), _proc(kind_b, boot_b, tmp_path)
    try:
        with a, b:
            call_each_other(ports, admins)
        # no client certificate: no stream
        creds = grpc.ssl_channel_credentials((d / "root.crt").read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{pilot.xds_port}", creds) as ch:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
            req = discovery_pb2.DiscoveryRequest(
                type_url="type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                resource_names=["default"],
            )
            with pytest.raises(grpc.RpcError):
                next(iter(stub.StreamAggregatedResources(iter([req]), timeout=3)))
    finally:
        pilot.stop()
