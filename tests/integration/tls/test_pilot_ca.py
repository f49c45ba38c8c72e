"""Identities from the pilot: `sofamesh pilot` is a CA and serves SDS over ADS; an Envoy
1.40 sidecar and a sofamesh sidecar, each with only the pilot's secrets ("default": its
own SPIFFE certificate, "ROOTCA": the root), call each other over mutual TLS. Each side
checks the other's SPIFFE id; a relay between them finds no plaintext on the wire.
Certificates live 6 s and are rotated at half life while a keep-alive client sends
requests the whole time: none fails. A stream asking for another secret gets nothing."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.pilot.conftest import PilotProcess, http
from tests.integration.tls.test_tls_rpc import Relay
from tests.support.envoy import ProxyProcess, admin_get

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
TLS_UP = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TD = "mesh.test"
BODY = b"the-app-answer-0123456789"


def spiffe(sa: str) -> str:
    return f"spiffe://{TD}/ns/default/sa/{sa}"


class _App(socketserver.BaseRequestHandler):
    """HTTP/1.1 keep-alive app: answers every request with BODY."""

    def handle(self) -> None:
        buf = b""
        while True:
            try:
                d = self.request.recv(65536)
            except OSError:
                return
            if not d:
                return
            buf += d
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
                )


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _sds(name: str, ads: bool) -> dict:
    if ads:
        return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}
    # standalone SDS (SecretDiscoveryService/StreamSecrets on the pilot): Envoy 1.40
    # crashes at start-up when a static cluster names SDS over ADS
    return {
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
        },
    }


def _common(peer: str, ads: bool) -> dict:
    return {
        "tls_certificate_sds_secret_configs": [_sds("default", ads)],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": spiffe(peer)}}
                ]
            },
            "validation_context_sds_secret_config": _sds("ROOTCA", ads),
        },
    }


def _hcm(prefix: str, cluster: str) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": prefix,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }


def _cluster(name: str, port: int, tls: dict | None = None) -> dict:
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
    }
    if tls is not None:
        c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
        # new upstream connections all along: fresh mTLS handshakes with the current
        # certificates (an expired one would fail them)
        c["max_requests_per_connection"] = 10
    return c


def sidecar(
    me: str,
    peer: str,
    pilot: PilotProcess,
    admin: int,
    ports: dict,
    app: int,
    upstream: int,
    ads: bool,
) -> dict:
    """Outbound: plaintext HTTP in, mTLS to the peer's inbound (through `upstream`).
    Inbound: mTLS in (the peer's identity only), plaintext to the app."""
    xds = _cluster("xds-grpc", pilot.xds_port)
    xds["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "node": {
            "id": f"sidecar~127.0.0.1~{me}-0.default~default.svc.cluster.local",
            "cluster": me,
            "metadata": {"NAMESPACE": "default", "SERVICE_ACCOUNT": me},
        },
        "admin": {"address": _addr(admin)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            }
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound",
                    "address": _addr(ports["out"]),
                    "filter_chains": [{"filters": [_hcm("out", "peer")]}],
                },
                {
                    "name": "inbound",
                    "stat_prefix": "inbound",
                    "address": _addr(ports["in"]),
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": TLS_DOWN,
                                    "common_tls_context": _common(peer, ads),
                                    "require_client_certificate": True,
                                },
                            },
                            "filters": [_hcm("in", "app")],
                        }
                    ],
                },
            ],
            "clusters": [
                xds,
                _cluster("app", app),
                _cluster(
                    "peer",
                    upstream,
                    {"@type": TLS_UP, "common_tls_context": _common(peer, ads)},
                ),
            ],
        },
    }


def _proc(kind: str, boot: dict, wd: Path) -> ProxyProcess:
    wd = wd / boot["node"]["cluster"]
    if kind == "envoy":
        return ProxyProcess.envoy(envoy_binary(), boot, wd)
    return ProxyProcess.sofamesh(sofamesh_command(), boot, wd)


class Client:
    """A keep-alive HTTP/1.1 client that counts failures (reconnecting after one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.ok = 0
        self.failed: list[str] = []

    def request(self) -> None:
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            self.sock.sendall(b"GET /x HTTP/1.1\r\nhost: peer\r\n\r\n")
            got = b""
            while not got.endswith(BODY):
                d = self.sock.recv(65536)
                if not d:
                    raise ConnectionError(f"closed after {got[:60]!r}")
                got += d
            if not got.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(got[:80].decode(errors="replace"))
            self.ok += 1
        except OSError as e:
            self.failed.append(repr(e))
            if self.sock is not None:
                self.sock.close()
            self.sock = None


def _serials(admin: int) -> set[str]:
    st, text = admin_get(admin, "/certs")
    assert st == 200
    return {
        cert["serial_number"].lstrip("0")
        for c in json.loads(text)["certificates"]
        for cert in c["cert_chain"]
    }


@pytest.fixture
def app():
    srv = _Server(("127.0.0.1", 0), _App)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize(
    ("kind_a", "kind_b", "sds"),
    [
        ("envoy", "sofamesh", "standalone"),
        ("sofamesh", "envoy", "standalone"),
        # SDS over the ADS stream itself (Envoy 1.40 crashes on it for static clusters)
        ("sofamesh", "sofamesh", "ads"),
    ],
)
def test_mixed_mesh_over_pilot_identities(tmp_path, app, kind_a, kind_b, sds):
    ads = sds == "ads"
    pilot = PilotProcess(
        tmp_path / "pilot", extra=["--trust-domain", TD, "--cert-ttl", "6"]
    ).start()
    ports = {s: {"out": free_port(), "in": free_port()} for s in "ab"}
    admins = {s: free_port() for s in "ab"}
    relay_to_b = Relay(ports["b"]["in"])
    relay_to_a = Relay(ports["a"]["in"])
    a = _proc(
        kind_a,
        sidecar("svc-a", "svc-b", pilot, admins["a"], ports["a"], app, relay_to_b.port, ads),
        tmp_path,
    )
    b = _proc(
        kind_b,
        sidecar("svc-b", "svc-a", pilot, admins["b"], ports["b"], app, relay_to_a.port, ads),
        tmp_path,
    )
    try:
        with a, b:
            ca, cb = Client(ports["a"]["out"]), Client(ports["b"]["out"])
            deadline = time.monotonic() + 10
            while (ca.ok == 0 or cb.ok == 0) and time.monotonic() < deadline:
                ca.request() if ca.ok == 0 else None
                cb.request() if cb.ok == 0 else None
                time.sleep(0.1)
            assert ca.ok and cb.ok, (ca.failed[-3:], cb.failed[-3:])
            ca.failed.clear()
            cb.failed.clear()
            first = {s: _serials(admins[s]) for s in "ab"}
            # 8 s of traffic both ways across the 3 s rotations: nothing fails
            end = time.monotonic() + 8
            while time.monotonic() < end:
                ca.request()
                cb.request()
                time.sleep(0.01)
            assert not ca.failed and not cb.failed, (ca.failed[:3], cb.failed[:3])
            assert ca.ok > 50 and cb.ok > 50
            # both sidecars hold a certificate issued after the first one (rotated)
            for s in "ab":
                assert _serials(admins[s]).isdisjoint(first[s]), s
            # the pilot rotated identities meanwhile
            status, metrics = http("GET", pilot.api + "/metrics")
            assert status == 200
            rotations = [
                ln for ln in str(metrics).splitlines() if ln.startswith("pilot_sds_rotations_total")
            ]
            assert rotations and float(rotations[0].split()[-1]) >= 2, rotations
            # the wire between the sidecars: TLS records only
            for relay in (relay_to_a, relay_to_b):
                wire = bytes(relay.wire)
                assert wire[:1] == b"\x16" and len(wire) > 5000
                for clear in (BODY, b"GET /x", b"host: peer"):
                    assert clear not in wire
            # each side holds its own identity, not the other's
            for kind, admin, me in ((kind_a, admins["a"], "svc-a"), (kind_b, admins["b"], "svc-b")):
                st, text = admin_get(admin, "/certs")
                assert st == 200
                doc = json.loads(text)
                uris = {
                    san.get("uri")
                    for c in doc["certificates"]
                    for cert in c["cert_chain"]
                    for san in cert["subject_alt_names"]
                }
                assert uris == {spiffe(me)}, (kind, uris)
    finally:
        relay_to_a.close()
        relay_to_b.close()
        pilot.stop()
