"""Dubbo and Bolt over mutual TLS between two sidecars, as a mesh runs them: a real
sofa-rpc-node client speaks plaintext to an outbound sidecar, which originates mTLS
(UpstreamTlsContext with the client's identity, the peer's SAN checked) to an inbound
sidecar that requires it (DownstreamTlsContext, require_client_certificate, SAN match) and
forwards to a real server. Every pairing of sofamesh and Envoy 1.40 (Envoy's dubbo_proxy;
tcp_proxy for Bolt, which Envoy lacks), with a relay between the sidecars that records the
wire: no method name or payload in clear. A client without the mesh's certificate is
refused by the inbound sidecar."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.rpc.conftest import (
    SERVICE,
    NodeServer,
    bolt_filter,
    cluster,
    dubbo_filter,
    node_client,
    route_config,
    stats,
    tcp_filter,
)
from tests.support.certs import make_ca, make_leaf
from tests.support.envoy import ProxyProcess

TLS_UP = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
ID_OUT = "spiffe://mesh.local/ns/default/sa/consumer"
ID_IN = "spiffe://mesh.local/ns/default/sa/provider"
SECRET = "xyzzy-secret-payload-1234567"
CALLS = [{"method": "plus", "args": [40, 2]}, {"method": "echo", "args": [SECRET]}]


class Relay:
    """A TCP relay that keeps every byte it forwards (the wire between two sidecars)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.wire = bytearray()
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                with self.lock:
                    self.wire += d
                b.sendall(d)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca("mesh CA")
    (d / "ca.crt").write_bytes(ca.cert_pem)
    for name, uri in (("out", ID_OUT), ("in", ID_IN)):
        make_leaf(ca, cn=name, dns=(), uris=(uri,), ips=()).write(d, name)
    make_leaf(make_ca("other CA"), cn="x", dns=(), uris=(ID_OUT,), ips=()).write(d, "stranger")
    return d


def _common(d: Path, me: str, peer_id: str) -> dict:
    return {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(d / f"{me}.crt")},
                "private_key": {"filename": str(d / f"{me}.key")},
            }
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(d / "ca.crt")},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer_id}}],
        },
    }


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _boot(admin: int, listener: dict, clusters: list[dict]) -> dict:
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def _rpc_filter(proto: str, kind: str, cluster_name: str, prefix: str) -> dict:
    if kind == "envoy" and proto == "bolt":
        return tcp_filter(cluster_name, prefix)  # Envoy has no Bolt filter
    if proto == "dubbo":
        return dubbo_filter(
            [
                {
                    "name": "svc",
                    "interface": SERVICE,
                    "routes": [
                        {
                            "match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
                            "route": {"cluster": cluster_name},
                        }
                    ],
                }
            ],
            prefix,
        )
    return bolt_filter([route_config(SERVICE, cluster_name)], prefix)


def outbound(d: Path, proto: str, kind: str, port: int, admin: int, target: int) -> dict:
    mesh = cluster("mesh", [target])
    mesh["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_UP, "common_tls_context": _common(d, "out", ID_IN)},
    }
    lst = {
        "name": "out",
        "address": _addr(port),
        "filter_chains": [{"filters": [_rpc_filter(proto, kind, "mesh", "out")]}],
    }
    return _boot(admin, lst, [mesh])


def inbound(d: Path, proto: str, kind: str, port: int, admin: int, app: int) -> dict:
    lst = {
        "name": "in",
        "stat_prefix": "in",
        "address": _addr(port),
        "filter_chains": [
            {
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": TLS_DOWN,
                        "common_tls_context": _common(d, "in", ID_OUT),
                        "require_client_certificate": True,
                    },
                },
                "filters": [_rpc_filter(proto, kind, "app", "in")],
            }
        ],
    }
    return _boot(admin, lst, [cluster("app", [app])])


def _proc(kind: str, boot: dict, wd: Path, name: str) -> ProxyProcess:
    wd = wd / name
    if kind == "envoy":
        return ProxyProcess.envoy(envoy_binary(), boot, wd)
    return ProxyProcess.sofamesh(sofamesh_command(), boot, wd)


PAIRS = [("sofamesh", "sofamesh"), ("sofamesh", "envoy"), ("envoy", "sofamesh")]


@pytest.mark.parametrize("proto", ["dubbo", "bolt"])
@pytest.mark.parametrize(("out_kind", "in_kind"), PAIRS)
def test_rpc_over_mtls_between_sidecars(pki, tmp_path, proto, out_kind, in_kind):
    with NodeServer(dubbo=proto == "dubbo") as app:
        in_port, out_port = free_port(), free_port()
        pin = _proc(
            in_kind, inbound(pki, proto, in_kind, in_port, free_port(), app.port), tmp_path, "in"
        )
        relay = Relay(in_port)
        pout = _proc(
            out_kind,
            outbound(pki, proto, out_kind, out_port, free_port(), relay.port),
            tmp_path,
            "out",
        )
        try:
            with pin, pout:
                res = node_client(out_port, CALLS, mode=proto, repeat=2)
                assert res == [{"ok": True, "result": 42}, {"ok": True, "result": SECRET}] * 2
                wire = bytes(relay.wire)
                assert len(wire) > 1000, len(wire)  # handshakes and records went through
                assert wire[:1] == b"\x16"  # a TLS handshake record opens the connection
                for clear in (SECRET.encode(), b"plus", SERVICE.encode()):
                    assert clear not in wire, clear
                if in_kind == "sofamesh":
                    st = stats(pin)
                    assert st["listener.in.ssl.handshake"] >= 1
                    assert st.get("listener.in.ssl.fail_verify_no_cert", 0) == 0
                # a client without the mesh's certificate gets nothing through
                assert _stranger(pki, in_port) == "rejected"
                if in_kind == "sofamesh":
                    assert stats(pin)["listener.in.ssl.fail_verify_error"] >= 1
        finally:
            relay.close()


def _stranger(d: Path, port: int) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(d / "stranger.crt"), str(d / "stranger.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                s.sendall(b"\xda\xbb" + b"\x00" * 14)
                return "rejected" if not s.recv(100) else "answered"
        except (ssl.SSLError, OSError):
            return "rejected"


RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


def _by_identity(allowed: str) -> dict:
    return {
        "name": "sofamesh.filters.rpc.rbac",
        "config": {
            "@type": RBAC_TYPE,
            "stat_prefix": "rpc_rbac",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "caller": {
                        "permissions": [{"any": True}],
                        "principals": [{"authenticated": {"principal_name": {"exact": allowed}}}],
                    }
                },
            },
        },
    }


@pytest.mark.parametrize("proto", ["dubbo", "bolt"])
@pytest.mark.parametrize(("allowed", "ok"), [(ID_OUT, True), (ID_IN, False)])
def test_rpc_rbac_by_caller_identity(pki, tmp_path, proto, allowed, ok):
    """The inbound sidecar's RPC RBAC names the caller by its certificate (Principal
    authenticated): the consumer's identity passes, any other is the protocol's denial."""
    with NodeServer(dubbo=proto == "dubbo") as app:
        in_port, out_port = free_port(), free_port()
        boot_in = inbound(pki, proto, "sofamesh", in_port, free_port(), app.port)
        tc = boot_in["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        key = "dubbo_filters" if proto == "dubbo" else "bolt_filters"
        router = [{"name": "envoy.filters.dubbo.router"}] if proto == "dubbo" else []
        tc["typed_config"][key] = [_by_identity(allowed), *router]
        pin = _proc("sofamesh", boot_in, tmp_path, "in")
        pout = _proc(
            "sofamesh",
            outbound(pki, proto, "sofamesh", out_port, free_port(), in_port),
            tmp_path,
            "out",
        )
        with pin, pout:
            res = node_client(out_port, CALLS[:1], mode=proto)
            if ok:
                assert res == [{"ok": True, "result": 42}], res
            else:
                assert not res[0]["ok"], res
                if proto == "dubbo":
                    assert "RBAC: access denied" in res[0]["error"], res
            st = stats(pin)
            assert st[f"rpc_rbac.rbac.{'allowed' if ok else 'denied'}"] == 1, {
                k: v for k, v in st.items() if "rbac" in k
            }
