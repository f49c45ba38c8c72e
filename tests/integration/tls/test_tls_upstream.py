"""Upstream TLS (a cluster's transport_socket UpstreamTlsContext, and transport_socket_matches
on endpoint metadata as Istio's `tlsMode: istio`), one bootstrap through Envoy 1.40 and
sofamesh: plaintext clients through tcp_proxy and HTTP listeners to TLS upstreams that
record the SNI, ALPN and client certificate they got; bad SAN and unknown-CA upstreams
fail in both; Envoy's cluster ssl.* counters agree."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.certs import make_ca, make_leaf
from tests.support.envoy import ProxyProcess, admin_get

TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
TLS_UP = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SPIFFE_CLIENT = "spiffe://mesh.local/ns/default/sa/client"


class TlsBackend:
    """A TLS server on 127.0.0.1:0 that answers with what it saw: SNI, ALPN, the client
    certificate's URI SAN, the TLS version; HTTP requests get an HTTP reply."""

    def __init__(self, pki: dict, cert: str, require_client: bool = True, plain: bool = False):
        self.ctx = None
        self.reused: list[bool] = []  # per TLS connection: a resumed session?
        if not plain:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*pki[cert + "_files"])
            ctx.load_verify_locations(cadata=pki["ca"].cert_pem.decode())
            ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            self.snis: list[str | None] = []
            ctx.sni_callback = lambda sobj, name, c: self.snis.append(name)
            self.ctx = ctx
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                desc = "plain"
                if outer.ctx is not None:
                    try:
                        conn = outer.ctx.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                    outer.reused.append(conn.session_reused)
                    sans = dict((conn.getpeercert() or {}).get("subjectAltName", ()))
                    sni = outer.snis[-1] if outer.snis else None
                    desc = (
                        f"sni={sni} alpn={conn.selected_alpn_protocol()} "
                        f"peer={sans.get('URI')} {conn.version()}"
                    )
                while True:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if data.startswith(b"GET "):
                        body = desc.encode()
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                        )
                    else:
                        conn.sendall(f"[{desc}] ".encode() + data)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca("mesh CA"), make_ca("other CA")
    out = {"dir": d, "ca": ca, "other": other}
    for name, leaf in (
        ("backend", make_leaf(ca, cn="backend", dns=("backend.mesh",), ips=())),
        ("client", make_leaf(ca, cn="client", dns=(), uris=(SPIFFE_CLIENT,), ips=())),
        ("expired", make_leaf(ca, cn="old", dns=("backend.mesh",), ips=(), expired=True)),
    ):
        out[name] = leaf
        out[name + "_files"] = leaf.write(d, name)
    (d / "ca.crt").write_bytes(ca.cert_pem)
    (d / "other.crt").write_bytes(other.cert_pem)
    return out


@pytest.fixture(scope="module")
def backends(pki):
    b = {
        "tls": TlsBackend(pki, "backend"),
        "plain": TlsBackend(pki, "backend", plain=True),
        "expired": TlsBackend(pki, "expired"),
    }
    yield b
    for x in b.values():
        x.stop()


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _up_tls(pki: dict, *, ca: str = "ca.crt", san: str = "backend.mesh", sni: str = "") -> dict:
    d = pki["dir"]
    ctx: dict = {
        "@type": TLS_UP,
        "common_tls_context": {
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": str(d / "client.crt")},
                    "private_key": {"filename": str(d / "client.key")},
                }
            ],
            "validation_context": {
                "trusted_ca": {"filename": str(d / ca)},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": san}}],
            },
            "alpn_protocols": ["http/1.1"],
        },
    }
    if sni:
        ctx["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def _cluster(name: str, endpoints: list[dict], **kw) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        **kw,
    }


def _ep(port: int, tls_mode: str | None = None) -> dict:
    e: dict = {"endpoint": {"address": _addr(port)}}
    if tls_mode:
        e["metadata"] = {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": tls_mode}}}
    return e


def _tcp_listener(name: str, port: int, cluster: str) -> dict:
    return {
        "name": name,
        "address": _addr(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {"@type": TCP, "stat_prefix": name, "cluster": cluster},
                    }
                ]
            }
        ],
    }


def _http_listener(name: str, port: int, cluster: str) -> dict:
    return {
        "name": name,
        "address": _addr(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": name,
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "route": {"cluster": cluster},
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters"
                                        ".http.router.v3.Router"
                                    },
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


LISTENERS = {
    "tcp_tls": "up_tls",
    "tcp_sni": "up_sni",
    "tcp_badsan": "up_badsan",
    "tcp_badca": "up_badca",
    "tcp_expired": "up_expired",
    "tcp_match": "up_match",
    "http_tls": "up_tls",
}


def bootstrap(pki: dict, backends: dict, ports: dict[str, int], admin: int) -> dict:
    t, p = backends["tls"].port, backends["plain"].port
    listeners = [
        (_http_listener if n.startswith("http") else _tcp_listener)(n, ports[n], c)
        for n, c in LISTENERS.items()
    ]
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                _cluster("up_tls", [_ep(t)], transport_socket=_up_tls(pki)),
                _cluster("up_sni", [_ep(t)], transport_socket=_up_tls(pki, sni="backend.mesh")),
                _cluster("up_badsan", [_ep(t)], transport_socket=_up_tls(pki, san="other.mesh")),
                _cluster("up_badca", [_ep(t)], transport_socket=_up_tls(pki, ca="other.crt")),
                _cluster(
                    "up_expired", [_ep(backends["expired"].port)], transport_socket=_up_tls(pki)
                ),
                _cluster(
                    "up_match",
                    [_ep(t, "istio"), _ep(p)],
                    transport_socket_matches=[
                        {
                            "name": "tlsMode-istio",
                            "match": {"tlsMode": "istio"},
                            "transport_socket": _up_tls(pki),
                        },
                        {
                            "name": "tlsMode-disabled",
                            "match": {},
                            "transport_socket": {
                                "name": "envoy.transport_sockets.raw_buffer",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions"
                                    ".transport_sockets.raw_buffer.v3.RawBuffer"
                                },
                            },
                        },
                    ],
                ),
            ],
        },
    }


def _tcp(port: int, payload: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(payload)
        got = b""
        try:
            while not got.endswith(payload):
                d = s.recv(4096)
                if not d:
                    break
                got += d
        except OSError:
            pass
        return got.decode() or "closed"


def _http(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            d = s.recv(4096)
            if not d:
                break
            got += d
        head, _, body = got.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].decode()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            d = s.recv(4096)
            if not d:
                break
            body += d
        return status if not status.endswith("200 OK") else f"{status} {body.decode()}"


def run_cases(ports: dict[str, int]) -> dict[str, str]:
    return {
        "tcp to TLS upstream, no sni": _tcp(ports["tcp_tls"], b"one"),
        "tcp to TLS upstream, sni": _tcp(ports["tcp_sni"], b"two"),
        "tcp upstream SAN mismatch": _tcp(ports["tcp_badsan"], b"three"),
        "tcp upstream unknown CA": _tcp(ports["tcp_badca"], b"four"),
        "tcp upstream expired certificate": _tcp(ports["tcp_expired"], b"five"),
        "transport_socket_matches x4": " | ".join(
            sorted(_tcp(ports["tcp_match"], b"m") for _ in range(4))
        ),
        "http to TLS upstream": _http(ports["http_tls"]),
    }


STATS = ("handshake", "connection_error", "fail_verify_error", "fail_verify_san")


def cluster_stats(admin: int) -> dict[str, int]:
    status, text = admin_get(admin, "/stats")
    assert status == 200
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if not name.startswith("cluster.up_") or not value.strip().isdigit():
            continue
        if any(name.endswith(".ssl." + s) for s in STATS) or name.endswith(
            (".upstream_cx_connect_fail", ".upstream_cx_total")
        ):
            out[name] = int(value)
    return out


@pytest.fixture(scope="module")
def results(pki, backends, tmp_path_factory):
    out = {}
    for kind in ("envoy", "sofamesh"):
        ports = {n: free_port() for n in LISTENERS}
        admin = free_port()
        b = bootstrap(pki, backends, ports, admin)
        wd = Path(tmp_path_factory.mktemp(kind))
        proc = (
            ProxyProcess.envoy(envoy_binary(), b, wd)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), b, wd)
        )
        with proc:
            time.sleep(0.5)  # the start-up probe's connections settle (tcp_proxy connects)
            before = cluster_stats(admin)
            cases = run_cases(ports)
            time.sleep(0.3)
            after = cluster_stats(admin)
            out[kind] = (cases, {k: v - before.get(k, 0) for k, v in after.items()})
    return out


def test_upstream_tls_outcomes_as_envoy(results):
    env, sofa = results["envoy"][0], results["sofamesh"][0]
    assert env["tcp to TLS upstream, sni"].startswith(
        f"[sni=backend.mesh alpn=http/1.1 peer={SPIFFE_CLIENT} TLSv1.2]"
    ), env
    assert "[plain] m" in env["transport_socket_matches x4"], env
    diffs = {k: (env[k], sofa.get(k)) for k in env if env[k] != sofa.get(k)}
    assert not diffs, diffs


def test_upstream_ssl_stats_as_envoy(results):
    env, sofa = results["envoy"][1], results["sofamesh"][1]
    assert env.get("cluster.up_badsan.ssl.fail_verify_san", 0) >= 1, env
    assert env.get("cluster.up_expired.ssl.fail_verify_error", 0) >= 1, env
    diffs = {
        k: (env.get(k), sofa.get(k)) for k in set(env) | set(sofa) if env.get(k) != sofa.get(k)
    }
    assert not diffs, diffs


def test_upstream_sessions_resume_as_envoy(pki, tmp_path):
    """Three connections one after another through tcp_proxy to a TLS upstream, after the
    start-up probe's (whose handshake is full): each resumes the session of the one before
    (Envoy's client contexts keep one session, max_session_keys 1 by default), as the
    upstream sees it and as ssl.session_reused counts it; with max_session_keys 0, every
    handshake is full."""
    seen = {}
    for kind in ("envoy", "sofamesh"):
        got = {}
        for keys in (None, 0):
            backend = TlsBackend(pki, "backend")  # its own session tickets
            try:
                port, admin = free_port(), free_port()
                tls = _up_tls(pki)
                if keys is not None:
                    tls["typed_config"]["max_session_keys"] = keys
                b = {
                    "admin": {"address": _addr(admin)},
                    "static_resources": {
                        "listeners": [_tcp_listener("tcp_up", port, "up")],
                        "clusters": [_cluster("up", [_ep(backend.port)], transport_socket=tls)],
                    },
                }
                wd = tmp_path / f"{kind}-{keys}"
                proc = (
                    ProxyProcess.envoy(envoy_binary(), b, wd)
                    if kind == "envoy"
                    else ProxyProcess.sofamesh(sofamesh_command(), b, wd)
                )
                with proc:
                    time.sleep(0.5)
                    backend.reused.clear()  # (the start-up probe's connection)
                    answers = [_tcp(port, b"r%d" % i) for i in range(3)]
                    time.sleep(0.3)
                    _, text = admin_get(admin, "/stats")
                    stat = dict(
                        line.partition(": ")[::2]
                        for line in text.splitlines()
                        if line.startswith("cluster.up.ssl.")
                    )
                got[keys] = (
                    [a.split("] ")[-1] for a in answers],
                    list(backend.reused),
                    stat.get("cluster.up.ssl.session_reused", "0"),
                )
            finally:
                backend.stop()
        seen[kind] = got
    assert seen["envoy"][None] == (["r0", "r1", "r2"], [True, True, True], "3"), seen
    assert seen["envoy"][0][1] == [False, False, False], seen
    assert seen["sofamesh"] == seen["envoy"]
