"""Downstream TLS (envoy.transport_sockets.tls on listener filter chains), one bootstrap
through Envoy 1.40 and sofamesh, the same clients (Python's ssl, openssl s_client, curl)
against both: handshake outcomes, the certificate each SNI gets (filter chain selection
by server_names with tls_inspector), plaintext beside TLS on one port (Istio's
PERMISSIVE), client certificates (missing, expired, unknown CA, SAN mismatch), TLS
versions, ALPN, and Envoy's ssl.* / tls_inspector.* counters."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.certs import make_ca, make_crl, make_leaf
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.tcp_echo import EchoHandler, ThreadedServer, header_echo

TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3"
        ".TlsInspector"
    },
}
SPIFFE_A = "spiffe://mesh.local/ns/default/sa/a"
SPIFFE_B = "spiffe://mesh.local/ns/default/sa/b"


_Echo = EchoHandler
_XfpEcho = header_echo(b"x-forwarded-proto", b"xfp=")  # answers with the x-forwarded-proto
_Server = ThreadedServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(d: Path) -> dict:
    ca, other_ca = make_ca("mesh CA"), make_ca("stranger CA")
    out = {
        "dir": d,
        "ca": ca,
        "a": make_leaf(ca, cn="a.example.com", dns=("a.example.com",), ips=()),
        "wild": make_leaf(ca, cn="wildcard", dns=("*.example.com",), ips=()),
        "plainhost": make_leaf(ca, cn="localhost"),
        "client_a": make_leaf(ca, cn="client-a", dns=(), uris=(SPIFFE_A,), ips=()),
        "client_b": make_leaf(ca, cn="client-b", dns=(), uris=(SPIFFE_B,), ips=()),
        "expired": make_leaf(ca, cn="old", dns=(), uris=(SPIFFE_A,), ips=(), expired=True),
        "stranger": make_leaf(other_ca, cn="stranger", dns=(), uris=(SPIFFE_A,), ips=()),
        "revoked": make_leaf(ca, cn="revoked", dns=(), uris=(SPIFFE_A,), ips=()),
    }
    (d / "ca.crt").write_bytes(ca.cert_pem)
    (d / "ca.crl").write_bytes(make_crl(ca, [out["revoked"]]))
    for name in ("client_a", "client_b", "expired", "stranger", "a", "revoked"):
        out[name].write(d, name)
    return out


def _tls(cert, *, require=False, trusted=None, sans=(), alpn=(), params=None) -> dict:
    common: dict = {
        "tls_certificates": [
            {
                "certificate_chain": {"inline_string": cert.cert_pem.decode()},
                "private_key": {"inline_string": cert.key_pem.decode()},
            }
        ]
    }
    if trusted is not None:
        common["validation_context"] = {"trusted_ca": {"filename": str(trusted)}}
        if sans:
            common["validation_context"]["match_typed_subject_alt_names"] = [
                {"san_type": "URI", "matcher": {"exact": s}} for s in sans
            ]
    if alpn:
        common["alpn_protocols"] = list(alpn)
    if params:
        common["tls_params"] = params
    ctx: dict = {"@type": TLS_DOWN, "common_tls_context": common}
    if require:
        ctx["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def _crl_tls(pki: dict, leaf_only: bool = True) -> dict:
    ts = _tls(pki["plainhost"], require=True, trusted=pki["dir"] / "ca.crt")
    vc = ts["typed_config"]["common_tls_context"]["validation_context"]
    vc["crl"] = {"filename": str(pki["dir"] / "ca.crl")}
    if leaf_only:
        vc["only_verify_leaf_cert_crl"] = True
    return ts


def _tcp(prefix: str, cluster: str = "echo") -> list[dict]:
    return [
        {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP, "stat_prefix": prefix, "cluster": cluster},
        }
    ]


def _http(prefix: str, body: str, cluster: str = "") -> list[dict]:
    action: dict = (
        {"route": {"cluster": cluster}}
        if cluster
        else {"direct_response": {"status": 200, "body": {"inline_string": body}}}
    )
    return [
        {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": prefix,
                "route_config": {
                    "virtual_hosts": [
                        {
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, **action}],
                        }
                    ]
                },
                "http_filters": [
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http"
                            ".router.v3.Router"
                        },
                    }
                ],
            },
        }
    ]


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def bootstrap(pki: dict, ports: dict[str, int], admin: int, echo: int, xfp: int) -> dict:
    ca_file = pki["dir"] / "ca.crt"
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "sni",
                    "stat_prefix": "sni",
                    "address": _addr(ports["sni"]),
                    "listener_filters": [INSPECTOR],
                    "filter_chains": [
                        {
                            "filter_chain_match": {"server_names": ["a.example.com"]},
                            "transport_socket": _tls(pki["a"]),
                            "filters": _tcp("tcp_a"),
                        },
                        {
                            "filter_chain_match": {"server_names": ["*.example.com"]},
                            "transport_socket": _tls(pki["wild"]),
                            "filters": _tcp("tcp_wild"),
                        },
                        {
                            # Istio PERMISSIVE: plaintext on the same port
                            "filter_chain_match": {"transport_protocol": "raw_buffer"},
                            "filters": _tcp("tcp_plain"),
                        },
                    ],
                },
                {
                    "name": "mtls",
                    "stat_prefix": "mtls",
                    "address": _addr(ports["mtls"]),
                    "filter_chains": [
                        {
                            "transport_socket": _tls(
                                pki["plainhost"],
                                require=True,
                                trusted=ca_file,
                                sans=(SPIFFE_A,),
                                alpn=("h2", "http/1.1"),
                            ),
                            "filters": _http("mtls_http", "mtls ok"),
                        }
                    ],
                },
                {
                    "name": "xfp",
                    "stat_prefix": "xfp",
                    "address": _addr(ports["xfp"]),
                    "listener_filters": [INSPECTOR],
                    "filter_chains": [
                        {
                            "filter_chain_match": {"transport_protocol": "tls"},
                            "transport_socket": _tls(pki["plainhost"]),
                            "filters": _http("xfp_tls", "", cluster="xfp"),
                        },
                        {"filters": _http("xfp_plain", "", cluster="xfp")},
                    ],
                },
                {
                    # a CRL revoking one client certificate (leaf only)
                    "name": "crl",
                    "stat_prefix": "crl",
                    "address": _addr(ports["crl"]),
                    "filter_chains": [
                        {
                            "transport_socket": _crl_tls(pki),
                            "filters": _http("crl_http", "crl ok"),
                        }
                    ],
                },
                {
                    # the same CRL, checked along the whole chain (Envoy's default)
                    "name": "crl_chain",
                    "stat_prefix": "crl_chain",
                    "address": _addr(ports["crl_chain"]),
                    "filter_chains": [
                        {
                            "transport_socket": _crl_tls(pki, leaf_only=False),
                            "filters": _http("crl_chain_http", "crl ok"),
                        }
                    ],
                },
                {
                    # TLS 1.2 at most, one cipher suite (an equal-preference group of one)
                    "name": "ciphers",
                    "stat_prefix": "ciphers",
                    "address": _addr(ports["ciphers"]),
                    "filter_chains": [
                        {
                            "transport_socket": _tls(
                                pki["plainhost"],
                                params={
                                    "tls_maximum_protocol_version": "TLSv1_2",
                                    "cipher_suites": ["[ECDHE-ECDSA-AES256-GCM-SHA384]"],
                                },
                            ),
                            "filters": _http("ciphers_http", "ciphers ok"),
                        }
                    ],
                },
                {
                    "name": "tls13",
                    "stat_prefix": "tls13",
                    "address": _addr(ports["tls13"]),
                    "filter_chains": [
                        {
                            "transport_socket": _tls(
                                pki["plainhost"],
                                params={"tls_minimum_protocol_version": "TLSv1_3"},
                            ),
                            "filters": _http("tls13_http", "tls13 ok"),
                        }
                    ],
                },
            ],
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(echo)}}]}],
                    },
                },
                {
                    "name": "xfp",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xfp",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(xfp)}}]}],
                    },
                },
            ],
        },
    }


def _client_ctx(pki: dict, cert: str | None = None, **kw) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=pki["ca"].cert_pem.decode())
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(str(pki["dir"] / f"{cert}.crt"), str(pki["dir"] / f"{cert}.key"))
    if kw.get("alpn"):
        ctx.set_alpn_protocols(kw["alpn"])
    if kw.get("max_version"):
        ctx.maximum_version = kw["max_version"]
    return ctx


def _peer_cn(s: ssl.SSLSocket) -> str:
    cert = s.getpeercert()
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return "?"


def tls_exchange(port: int, ctx: ssl.SSLContext, sni: str | None, payload: bytes) -> str:
    """What a client sees: the server certificate's CN, the ALPN chosen and the reply, or
    where it failed ('handshake' / 'read')."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        try:
            s = ctx.wrap_socket(raw, server_hostname=sni)
        except (ssl.SSLError, OSError):
            return "rejected"
        try:
            s.sendall(payload)
            got = b""
            while True:
                d = s.recv(4096)
                if not d:
                    break
                got += d
                if got.startswith(b"echo:") or (
                    b"\r\n\r\n" in got and (got.endswith(b" ok") or b"xfp=" in got)
                ):
                    break
        except (ssl.SSLError, OSError):
            return "rejected"
        if not got:
            return "rejected"
        body = got.split(b"\r\n\r\n", 1)[-1] if got.startswith(b"HTTP/") else got
        status = got.split(b"\r\n", 1)[0].decode() + " " if got.startswith(b"HTTP/") else ""
        return (
            f"{_peer_cn(s)} alpn={s.selected_alpn_protocol()} {s.version()} {status}{body.decode()}"
        )
    finally:
        raw.close()


def alpn_of(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                return f"alpn={s.selected_alpn_protocol()}"
        except (ssl.SSLError, OSError):
            return "rejected"


def resumed(port: int, ctx: ssl.SSLContext) -> str:
    """A TLS 1.2 session resumed on a second connection (stateless tickets)."""
    out = []
    session = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            try:
                with ctx.wrap_socket(raw, session=session) as s:
                    s.sendall(GET)
                    while s.recv(4096):
                        pass
                    out.append(str(s.session_reused))
                    session = s.session
            except (ssl.SSLError, OSError):
                return "rejected"
    return " ".join(out)


def cipher_of(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                return f"{s.version()} {s.cipher()[0]}"
        except (ssl.SSLError, OSError):
            return "rejected"


def plain_exchange(port: int, payload: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(payload)
        try:
            d = s.recv(4096)
        except OSError:
            return "rejected"
        return d.decode() if d else "rejected"


GET = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


def run_cases(pki: dict, ports: dict[str, int]) -> dict[str, str]:
    c = _client_ctx
    out = {
        "sni a.example.com": tls_exchange(ports["sni"], c(pki), "a.example.com", b"hi"),
        "sni b.example.com (wildcard)": tls_exchange(ports["sni"], c(pki), "b.example.com", b"hi"),
        "sni x.y.example.com (wildcard)": tls_exchange(
            ports["sni"], c(pki), "x.y.example.com", b"hi"
        ),
        "sni other.org (no chain)": tls_exchange(ports["sni"], c(pki), "other.org", b"hi"),
        "no sni (no chain)": tls_exchange(ports["sni"], c(pki), None, b"hi"),
        "plaintext beside tls": plain_exchange(ports["sni"], b"plain"),
        "mtls good client": tls_exchange(ports["mtls"], c(pki, "client_a"), None, GET),
        "mtls alpn h2 preferred": alpn_of(
            ports["mtls"], c(pki, "client_a", alpn=["h2", "http/1.1"])
        ),
        "mtls alpn http/1.1": tls_exchange(
            ports["mtls"], c(pki, "client_a", alpn=["http/1.1"]), None, GET
        ),
        "mtls no client cert": tls_exchange(ports["mtls"], c(pki), None, GET),
        "mtls SAN mismatch": tls_exchange(ports["mtls"], c(pki, "client_b"), None, GET),
        "mtls expired client cert": tls_exchange(ports["mtls"], c(pki, "expired"), None, GET),
        "mtls unknown CA": tls_exchange(ports["mtls"], c(pki, "stranger"), None, GET),
        "mtls plaintext": plain_exchange(ports["mtls"], GET),
        "x-forwarded-proto over TLS": tls_exchange(ports["xfp"], c(pki), None, GET),
        "x-forwarded-proto plaintext beside TLS": plain_exchange(ports["xfp"], GET).split(
            "\r\n\r\n"
        )[-1],
        "mtls session resumed (TLS 1.2)": resumed(
            ports["mtls"], c(pki, "client_a", max_version=ssl.TLSVersion.TLSv1_2)
        ),
        "crl: good client": tls_exchange(ports["crl"], c(pki, "client_a"), None, GET),
        "crl: revoked client": tls_exchange(ports["crl"], c(pki, "revoked"), None, GET),
        "crl chain: good client": tls_exchange(ports["crl_chain"], c(pki, "client_a"), None, GET),
        "crl chain: revoked client": tls_exchange(ports["crl_chain"], c(pki, "revoked"), None, GET),
        "one cipher, TLS 1.2 at most": cipher_of(ports["ciphers"], c(pki)),
        "tls13 with TLS 1.3": tls_exchange(ports["tls13"], c(pki), None, GET),
        "tls13 with TLS 1.2 client": tls_exchange(
            ports["tls13"], c(pki, max_version=ssl.TLSVersion.TLSv1_2), None, GET
        ),
    }
    return out


def openssl_cases(pki: dict, ports: dict[str, int]) -> dict[str, str]:
    """openssl s_client: the verify result and the certificate subject per SNI."""
    if shutil.which("openssl") is None:
        return {}
    out = {}
    for sni in ("a.example.com", "q.example.com"):
        r = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{ports['sni']}",
                "-servername",
                sni,
                "-CAfile",
                str(pki["dir"] / "ca.crt"),
            ],
            input=b"",
            capture_output=True,
            timeout=10,
            check=False,
        )
        text = r.stdout.decode(errors="replace")
        subj = [ln for ln in text.splitlines() if ln.startswith("subject=")]
        ver = [ln.strip() for ln in text.splitlines() if "Verify return code" in ln]
        out[f"s_client {sni}"] = f"{subj[:1]} {ver[:1]}"
    return out


def curl_cases(pki: dict, ports: dict[str, int]) -> dict[str, str]:
    if shutil.which("curl") is None:
        return {}
    d = pki["dir"]
    out = {}
    cert = ["--cert", str(d / "client_a.crt"), "--key", str(d / "client_a.key")]
    for name, extra in (
        ("curl mtls client_a", [*cert, "--http1.1"]),
        ("curl mtls no cert", ["--http1.1"]),
        # ALPN h2 selects the HTTP/2 codec of an AUTO connection manager
        ("curl mtls http2 by ALPN", [*cert, "--http2"]),
    ):
        r = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "-",
                "-w",
                " code=%{http_code} http=%{http_version}",
                "--cacert",
                str(d / "ca.crt"),
                *extra,
                f"https://localhost:{ports['mtls']}/",
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
        out[name] = f"{r.stdout.decode(errors='replace')} exit={r.returncode != 0}"
    return out


SSL_STATS = (
    "handshake",
    "session_reused",
    "connection_error",
    "no_certificate",
    "fail_verify_no_cert",
    "fail_verify_error",
    "fail_verify_san",
)


def tls_stats(admin: int) -> dict[str, int]:
    status, text = admin_get(admin, "/stats")
    assert status == 200
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if not value.strip().isdigit() or name.startswith("listener.admin."):
            continue
        if (
            name.startswith("listener.")
            and any(name.endswith(".ssl." + s) for s in SSL_STATS)
            or name.startswith("tls_inspector.")
            or name.endswith(".no_filter_chain_match")
            or ".ssl.versions." in name
            and name.startswith("listener.")
        ):
            out[name] = int(value)
    return out


@pytest.fixture(scope="module")
def echo():
    srv = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


NAMES = ("sni", "mtls", "tls13", "xfp", "crl", "crl_chain", "ciphers")


@pytest.fixture(scope="module")
def xfp():
    srv = _Server(("127.0.0.1", 0), _XfpEcho)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def results(pki, echo, xfp, tmp_path_factory):
    out = {}
    for kind in ("envoy", "sofamesh"):
        ports = {n: free_port() for n in NAMES}
        admin = free_port()
        b = bootstrap(pki, ports, admin, echo, xfp)
        wd = Path(tmp_path_factory.mktemp(kind))
        proc = (
            ProxyProcess.envoy(envoy_binary(), b, wd)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), b, wd)
        )
        with proc:
            cases = run_cases(pki, ports)
            cases.update(openssl_cases(pki, ports))
            cases.update(curl_cases(pki, ports))
            import time

            time.sleep(0.3)  # the last connections' server-side failures are counted
            out[kind] = (cases, tls_stats(admin))
    return out


def test_clients_see_the_same(results):
    env, sofa = results["envoy"][0], results["sofamesh"][0]
    assert env["sni a.example.com"].startswith("a.example.com alpn=None")
    assert env["mtls good client"].endswith("HTTP/1.1 200 OK mtls ok")
    assert env["mtls no client cert"] == "rejected"
    assert env["crl: good client"].endswith("200 OK crl ok"), env
    assert env["crl: revoked client"] == "rejected", env
    assert env["one cipher, TLS 1.2 at most"] == "TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384", env
    assert env["mtls session resumed (TLS 1.2)"] == "False True", env
    assert env["curl mtls http2 by ALPN"] == "mtls ok code=200 http=2 exit=False", env
    assert env["x-forwarded-proto over TLS"].endswith("200 OK xfp=https"), env
    assert env["x-forwarded-proto plaintext beside TLS"] == "xfp=http", env
    diffs = {k: (env[k], sofa.get(k)) for k in env if env[k] != sofa.get(k)}
    assert not diffs, diffs


def test_ssl_stats_as_envoy(results):
    env, sofa = results["envoy"][1], results["sofamesh"][1]
    assert env.get("listener.mtls.ssl.fail_verify_san", 0) >= 1
    assert env.get("listener.sni.ssl.handshake", 0) >= 4
    diffs = {
        k: (env.get(k), sofa.get(k)) for k in set(env) | set(sofa) if env.get(k) != sofa.get(k)
    }
    assert not diffs, diffs
