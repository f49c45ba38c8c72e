"""Envoy's own example configs for these filters (tests/fixtures/envoy-examples), served by
Envoy 1.40 and by `sofamesh proxy` with the same traffic: every listener is moved to a free
loopback port, every cluster endpoint to a ScriptedUpstream, the admin to a free port;
nothing else of the example changes (TLS listeners keep their inline certificates). Each
listener gets the same requests on every path its routes name (compression negotiation,
gzip uploads, CORS preflights and simple requests, CSRF origins and referers, mirror
headers), and the answers (status, headers, bodies once decompressed) and the filters'
stats must agree."""

from __future__ import annotations

import gzip
import http.client
import socket
import ssl
import time
from pathlib import Path

import brotli
import pytest
import yaml
import zstandard

from tests.conftest import FIXTURES, envoy_binary, sofamesh_command
from tests.integration.http_filters.conftest import TEXT, VOLATILE, ScriptedUpstream, _distinct
from tests.support.certs import make_ca, make_leaf
from tests.support.envoy import ProxyProcess, admin_get

EXAMPLES = [
    "gzip_envoy.yaml",
    "brotli_envoy.yaml",
    "zstd_envoy.yaml",
    "cors_backend_envoy.yaml",
    "cors_frontend_envoy.yaml",
    "csrf_samesite_envoy.yaml",
    "csrf_crosssite_envoy.yaml",
    "route-mirror_envoy.yaml",
    "rbac_envoy.yaml",
    "grpc-bridge_client_envoy-proxy.yaml",
    "front-proxy_envoy.yaml",
    "front-proxy_service-envoy.yaml",
    "front-proxy_service-envoy-2.yaml",
    "local_ratelimit_envoy.yaml",
    "double-proxy_envoy.yaml",
    "tls_envoy-https-http.yaml",
    "tls_envoy-https-passthrough.yaml",
    "tls-inspector_envoy.yaml",
    "websocket_envoy-ws.yaml",
    "websocket_envoy-ws-route.yaml",
    "websocket_envoy-wss-passthrough.yaml",
    "zipkin_envoy-1.yaml",
    "zipkin_envoy-2.yaml",
    "zipkin_envoy-front-proxy.yaml",
    "jaeger-tracing_envoy.yaml",
    "jaeger-tracing_service1-envoy-jaeger.yaml",
    "jaeger-tracing_service2-envoy-jaeger.yaml",
    "grpc-bridge_server_envoy-proxy.yaml",
    # traced (their collectors, pointed at the ScriptedUpstream, refuse the exports: the
    # spans themselves are compared in tracing/test_otel.py)
    "opentelemetry_envoy-2.yaml",
    "opentelemetry_envoy-front-proxy.yaml",
    # clusters that speak TLS upstream (to a _TlsUpstream)
    "tls_envoy-http-https.yaml",
    "tls_envoy-https-https.yaml",
    "tls-sni_envoy-client.yaml",
    "websocket_envoy-wss.yaml",
    # priority levels, locality weights, endpoint hostnames and health check ports
    "locality-load-balancing_envoy.yaml",
    # a Lua cluster specifier (EXTRA: the request its script routes elsewhere)
    "lua-cluster-specifier_envoy.yaml",
    # not here: dynamic-config-cp (its listeners and clusters come from a control plane)
]
DECODE = {
    "gzip": gzip.decompress,
    "br": brotli.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
}
# a counter each example's filters must have moved
EXPECT = {
    "gzip_envoy.yaml": {"compressed", "decompressed"},
    "brotli_envoy.yaml": {"compressed"},
    "zstd_envoy.yaml": {"compressed"},
    "cors_backend_envoy.yaml": {"origin_valid"},
    "csrf_samesite_envoy.yaml": {"request_invalid"},
    "rbac_envoy.yaml": {"allowed", "denied"},
    # the frontends carry the CORS filter without a policy: nothing to count; route-mirror
    # has no filter, its mirrors are checked on the upstream
}
# requests only some examples get (one more request changes when a Zipkin tracer flushes)
EXTRA = {
    # header_key: fake makes the Lua script name fake_cluster, which the example lacks (503 NC)
    "lua-cluster-specifier_envoy.yaml": [("GET", {"header_key": "fake"}, None)],
}
FILTER_STATS = (".cors.", ".csrf.", ".compressor.", ".decompressor.", ".rbac.")


class _TlsUpstream(ScriptedUpstream):
    """A ScriptedUpstream behind TLS (a leaf of a fresh test CA), for clusters that speak
    TLS upstream."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        workdir.mkdir(parents=True, exist_ok=True)
        cert, key = make_leaf(make_ca()).write(workdir, "upstream")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)

    def _serve(self, c) -> None:
        try:
            c = self.ctx.wrap_socket(c, server_side=True)
        except (OSError, ssl.SSLError):
            c.close()
            return
        super()._serve(c)


def _walk_addresses(
    boot: dict, listener_ports: list[int], upstream_port: int, tls_port: int
) -> None:
    for lst, port in zip(boot["static_resources"]["listeners"], listener_ports, strict=True):
        lst["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
    for cl in boot["static_resources"].get("clusters", []):
        port = tls_port if "transport_socket" in cl else upstream_port
        for eps in cl.get("load_assignment", {}).get("endpoints", []):
            for ep in eps.get("lb_endpoints", []):
                ep["endpoint"]["address"]["socket_address"].update(
                    address="127.0.0.1", port_value=port
                )


def _paths(listener: dict) -> list[str]:
    out: list[str] = []
    for f in listener["filter_chains"][0]["filters"]:
        rc = f.get("typed_config", {}).get("route_config", {})
        for vh in rc.get("virtual_hosts", []):
            for r in vh.get("routes", []):
                m = r.get("match", {})
                p = m.get("prefix") or m.get("path")
                if p and p not in out:
                    out.append(p)
    return out or ["/"]


def _requests(path: str) -> list[tuple[str, dict[str, str], bytes | None]]:
    big = {"x-resp-size": "5000", "x-resp-type": "application/json"}
    return [
        ("GET", {**big, "accept-encoding": "gzip"}, None),
        ("GET", {**big, "accept-encoding": "br;q=0.9, zstd;q=0.8, gzip;q=0.5"}, None),
        ("GET", {**big, "x-resp-type": "text/plain", "accept-encoding": "*"}, None),
        ("GET", {**big, "x-resp-etag": '"v1"', "accept-encoding": "gzip, br, zstd"}, None),
        ("GET", {"x-resp-size": "50", "accept-encoding": "gzip, br, zstd"}, None),
        ("POST", {"content-encoding": "gzip", "x-resp-echo": "1"}, gzip.compress(TEXT[:3000])),
        ("OPTIONS", {"origin": "http://example.com", "access-control-request-method": "GET"}, None),
        (
            "OPTIONS",
            {"origin": "http://localhost:8000", "access-control-request-method": "POST"},
            None,
        ),
        ("GET", {"origin": "http://example.com"}, None),
        ("GET", {"origin": "http://localhost:8000"}, None),
        ("POST", {"host": "localhost:8000", "origin": "http://localhost:8000"}, b"x"),
        ("POST", {"host": "localhost:8000", "origin": "http://evil.example"}, b"x"),
        ("POST", {"host": "localhost:8000", "referer": "http://localhost:8000/p"}, b"x"),
        ("DELETE", {"host": "localhost:8000"}, None),
        ("GET", {"x-mirror-cluster": "service2"}, None),
        ("GET", {"x-mirror-cluster": "service1"}, None),
        ("GET", {"x-mirror-cluster": "service2-mirror"}, None),
        ("GET", {"referer": "https://www.envoyproxy.io/docs/envoy/latest/"}, None),
        ("GET", {"referer": "https://example.com/docs/envoy"}, None),
        # the gRPC bridge example's virtual host answers to `grpc` only
        ("POST", {"host": "grpc", "content-type": "application/grpc"}, b"\0\0\0\0\1x"),
        ("POST", {"host": "grpc", "content-type": "application/grpc", "x-resp-size": "99"}, b""),
        ("GET", {"host": "grpc", "x-resp-chunked": "1"}, None),
    ]


class _Running:
    def __init__(self, kind: str, boot: dict, work: Path, tls: list[bool]) -> None:
        self.upstream = ScriptedUpstream().start()
        self.tls_upstream = _TlsUpstream(work / "upstream-certs").start()
        n = len(boot["static_resources"]["listeners"])
        ports = _distinct(n + 1, {self.upstream.port, self.tls_upstream.port})
        self.ports, self.admin, self.tls = ports[:n], ports[n], tls
        _walk_addresses(boot, self.ports, self.upstream.port, self.tls_upstream.port)
        boot["admin"] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin}}
        }
        if kind == "envoy":
            self.proc = ProxyProcess.envoy(envoy_binary(), boot, work)
        else:
            self.proc = ProxyProcess.sofamesh(sofamesh_command(), boot, work)
        self.proc.start()

    def stop(self) -> None:
        self.proc.stop()
        self.upstream.stop()
        self.tls_upstream.stop()

    def request(self, i: int, method: str, path: str, headers: dict, body: bytes | None):
        if self.tls[i]:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.ports[i], timeout=10, context=ctx
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.ports[i], timeout=10)
        try:
            # http.client sends the head and the body in two writes: corked, they leave
            # together, so neither proxy can answer (say, an upstream's failure) before the
            # request is complete, which would add `connection: close` by timing alone
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            own_host = "host" in headers
            conn.putrequest(method, path, skip_host=own_host, skip_accept_encoding=True)
            if not own_host:
                conn.putheader("host", "example.com")
            for k, v in headers.items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            r = conn.getresponse()
            data = r.read()
            hs = sorted(
                (k.lower(), "<trace id>" if k.lower() == "x-b3-traceid" else v)
                for k, v in r.getheaders()
                if k.lower() not in VOLATILE
            )
            enc = r.getheader("content-encoding")
            return r.status, hs, DECODE[enc](data) if enc in DECODE else data
        finally:
            conn.close()

    def filter_stats(self) -> dict[str, int]:
        _, text = admin_get(self.admin, "/stats")
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            # the compressed byte count depends on the library build
            if (
                any(s in k for s in FILTER_STATS)
                and v.strip().isdigit()
                and not k.endswith("total_compressed_bytes")
            ):
                out[k] = int(v)
        return out


# a tracer's span reports (Zipkin JSON, as the jaeger and zipkin examples send them): how
# many batches a run makes depends on when each proxy's flush timer fires, so the
# comparison keeps whether they came, not how many (CI, 2026-12-04: 2 batches against 1)
SPAN_REPORTS = ("/api/v2/spans", "/api/v1/spans")


def _upstream_paths(r: _Running) -> list[str]:
    """The requests the upstreams got, but a tracer's gRPC exports (an HTTP/2 preface, PRI *,
    which the HTTP/1.1 ScriptedUpstream cannot answer; each proxy retries them its way), and
    span report batches counted once."""
    recs = r.upstream.records + r.tls_upstream.records
    paths = [x.path for x in recs if x.method != "PRI"]
    reports = sorted({p for p in paths if p in SPAN_REPORTS})
    return sorted(p for p in paths if p not in SPAN_REPORTS) + reports


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_served_like_envoy(name, tmp_path):
    text = (FIXTURES / "envoy-examples" / name).read_text()
    listeners = yaml.safe_load(text)["static_resources"]["listeners"]
    tls = [any("transport_socket" in fc for fc in lst["filter_chains"]) for lst in listeners]
    started: list[_Running] = []
    try:
        envoy = _Running("envoy", yaml.safe_load(text), tmp_path / "envoy", tls)
        started.append(envoy)
        ours = _Running("sofamesh", yaml.safe_load(text), tmp_path / "sofamesh", tls)
        started.append(ours)
        compared = 0
        statuses: set[int] = set()
        for i, lst in enumerate(listeners):
            for path in _paths(lst):
                for method, headers, body in _requests(path) + EXTRA.get(name, []):
                    e = envoy.request(i, method, path, headers, body)
                    o = ours.request(i, method, path, headers, body)
                    assert o == e, (name, i, method, path, headers)
                    compared += 1
                    statuses.add(o[0])
        time.sleep(0.3)  # mirrored copies land
        assert _upstream_paths(ours) == _upstream_paths(envoy)
        st = ours.filter_stats()
        assert st == envoy.filter_stats()
        assert compared >= 16
        # the examples' filters acted (the comparison is about something)
        acted = {k.rsplit(".", 1)[-1] for k, v in st.items() if v}
        if name in EXPECT:
            assert acted & EXPECT[name], (name, sorted(acted))
        if name == "lua-cluster-specifier_envoy.yaml":  # the script sent both ways
            assert {200, 503} <= statuses, statuses
        if name == "route-mirror_envoy.yaml":
            hosts = [h for r in ours.upstream.records for h in r.header("host")]
            assert sum(h.endswith("-shadow") for h in hosts) >= 2, hosts
    finally:
        for r in started:
            r.stop()
