"""Internal listeners (envoy.bootstrap.internal_listener) against Envoy 1.40: one bootstrap,
run by both proxies, each in front of its own upstream (an HTTP/1.1 server on 127.0.0.1
that answers with what it received as JSON). Public listeners reach internal listeners
through clusters whose endpoint is an `envoy_internal_address`:

    pub_http (HCM)      -> to_ihttp (internal_upstream transport) -> ihttp (HCM) -> real
    pub_tcp (tcp_proxy) -> to_itcp (no transport socket)          -> itcp (tcp_proxy) -> real
    pub_h2i (HCM)       -> to_ihttp2 (HTTP/2 upstream)             -> ihttp (HCM) -> real
    pub_tcp_missing, /missing -> to_missing: an internal listener that does not exist

Compared: what the client gets (status, body, headers), what the upstream gets (path, body
size, x-forwarded-for / x-envoy-external-address: the internal HCM has use_remote_address
and a peer that is no IP), the stats of the internal listeners, their connection managers
and tcp_proxy, and the clusters (connect failures of the missing listener). sofamesh runs
with 1 and 2 workers; a bootstrap with an internal listener and no bootstrap extension is
refused by both."""

from __future__ import annotations

import copy
import http.client
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get

_T = "type.googleapis.com/"
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"},
}
INTERNAL_UPSTREAM = {
    "name": "envoy.transport_sockets.internal_upstream",
    "typed_config": {
        "@type": _T + "envoy.extensions.transport_sockets.internal_upstream.v3"
        ".InternalUpstreamTransport",
        "transport_socket": {
            "name": "raw_buffer",
            "typed_config": {
                "@type": _T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
            },
        },
    },
}
H2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
BIG = 3 * 1024 * 1024  # through 64 KiB internal buffers: flow control, both ways


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        want = int(self.headers.get("x-resp-size") or 0)
        out = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers),
                "received": len(body),
            }
        ).encode()
        out += b" " * max(0, want - len(out))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-upstream", "real")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, *a: Any) -> None:
        pass


class Upstream:
    def __init__(self) -> None:
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def _hcm(prefix: str, cluster: str, **kw: Any) -> dict:
    routes = [
        {"match": {"prefix": "/missing"}, "route": {"cluster": "to_missing"}},
        {"match": {"prefix": "/"}, "route": {"cluster": cluster}},
    ]
    cfg = {
        "@type": _T + HCM,
        "stat_prefix": prefix,
        "http_filters": [ROUTER],
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
        **kw,
    }
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


def _tcp(prefix: str, cluster: str) -> dict:
    cfg = {"@type": _T + TCP, "stat_prefix": prefix, "cluster": cluster}
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": cfg}


def _public(name: str, port: int, f: dict) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [f]}],
    }


def _internal(name: str, f: dict) -> dict:
    return {"name": name, "internal_listener": {}, "filter_chains": [{"filters": [f]}]}


def _internal_cluster(name: str, target: str, **kw: Any) -> dict:
    ep = {"envoy_internal_address": {"server_listener_name": target, "endpoint_id": "e1"}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": ep}}]}],
        },
        **kw,
    }


def bootstrap(up_port: int) -> dict:
    return copy.deepcopy(_bootstrap(up_port))  # (tests change it: INTERNAL_UPSTREAM is shared)


def _bootstrap(up_port: int) -> dict:
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}
        },
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": _T + "udpa.type.v1.TypedStruct",  # as Istio's pilot-agent writes it
                    "type_url": _T + "envoy.extensions.bootstrap.internal_listener.v3"
                    ".InternalListener",
                    "value": {"buffer_size_kb": 64},
                },
            }
        ],
        "static_resources": {
            "listeners": [
                _public("pub_http", free_port(), _hcm("pub", "to_ihttp")),
                _public("pub_h2i", free_port(), _hcm("pubh2", "to_ihttp2")),
                _public("pub_tcp", free_port(), _tcp("pubtcp", "to_itcp")),
                _public("pub_tcp_missing", free_port(), _tcp("pubmiss", "to_missing")),
                _internal("ihttp", _hcm("inner", "real", use_remote_address=True)),
                _internal("itcp", _tcp("innertcp", "real")),
            ],
            "clusters": [
                _internal_cluster("to_ihttp", "ihttp", transport_socket=INTERNAL_UPSTREAM),
                _internal_cluster(
                    "to_ihttp2",
                    "ihttp",
                    transport_socket=INTERNAL_UPSTREAM,
                    typed_extension_protocol_options=H2,
                ),
                _internal_cluster("to_itcp", "itcp"),
                _internal_cluster("to_missing", "no_such_listener"),
                {
                    "name": "real",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "real",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": up_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
            ],
        },
    }


def _port(b: dict, name: str) -> int:
    for lst in b["static_resources"]["listeners"]:
        if lst["name"] == name:
            return int(lst["address"]["socket_address"]["port_value"])
    raise KeyError(name)


UPSTREAM_HEADERS = ("x-forwarded-for", "x-envoy-external-address", "x-forwarded-proto", "x-in")
RESPONSE_HEADERS = ("content-type", "x-upstream", "server", "content-length")


def _http(port: int, method: str, path: str, headers: dict, body: bytes = b"") -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body or None, headers=headers)
        r = c.getresponse()
        data = r.read()
    finally:
        c.close()
    out: dict = {"status": r.status}
    out["headers"] = {k: r.getheader(k) for k in RESPONSE_HEADERS if k != "content-length"}
    out["has_service_time"] = r.getheader("x-envoy-upstream-service-time") is not None
    if r.getheader("x-upstream") == "real":
        seen = json.loads(data)
        hd = {k.lower(): v for k, v in seen["headers"].items()}
        out["upstream"] = {
            "path": seen["path"],
            "received": seen["received"],
            "headers": {k: hd.get(k) for k in UPSTREAM_HEADERS},
        }
        out["size"] = len(data)
    else:
        out["body"] = data.decode()
    return out


def _tcp_exchange(port: int, payload: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(payload)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


def _through_tcp(port: int) -> dict:
    data = _tcp_exchange(
        port, b"GET /via-tcp HTTP/1.1\r\nhost: t\r\nx-in: tcp\r\nconnection: close\r\n\r\n"
    )
    head, _, body = data.partition(b"\r\n\r\n")
    seen = json.loads(body)
    return {"status": head.split(b"\r\n")[0].split(b" ")[1], "path": seen["path"],
            "x-in": seen["headers"].get("x-in")}  # fmt: skip


def exercise(b: dict) -> dict:
    """The same traffic through one proxy; what clients and the upstream saw."""
    out: dict = {}
    hp, h2p = _port(b, "pub_http"), _port(b, "pub_h2i")
    hdrs = {"x-forwarded-for": "1.2.3.4", "x-in": "h1"}
    for i in range(3):  # several requests, on new and reused internal connections
        out[f"get{i}"] = _http(hp, "GET", f"/a/{i}", hdrs)
    out["no_xff"] = _http(hp, "GET", "/b", {"x-in": "plain"})
    out["big_post"] = _http(hp, "POST", "/up", {"x-in": "big"}, b"x" * BIG)
    out["big_reply"] = _http(hp, "GET", "/down", {"x-in": "big", "x-resp-size": str(BIG)})
    out["h2_internal"] = _http(h2p, "GET", "/h2", {"x-in": "h2"})
    out["h2_big"] = _http(h2p, "POST", "/h2up", {"x-in": "h2"}, b"y" * BIG)
    out["missing_http"] = _http(hp, "GET", "/missing", {"x-in": "m"})
    out["tcp"] = [_through_tcp(_port(b, "pub_tcp")) for _ in range(2)]
    out["tcp_missing"] = _tcp_exchange(_port(b, "pub_tcp_missing"), b"hello")
    return out


# (sofamesh counts no listener.<name>.http.<prefix>.* and no listener.<name>.downstream_cx_*
# for tcp_proxy listeners, public or internal: not compared here)
STATS = (
    "listener.envoy_internal_ihttp.downstream_cx_total",
    "http.inner.downstream_rq_total",
    "http.inner.downstream_rq_2xx",
    "http.pub.downstream_rq_5xx",
    "tcp.innertcp.downstream_cx_total",
    "tcp.pubtcp.downstream_cx_total",
    "tcp.pubmiss.downstream_cx_total",
    "cluster.to_ihttp.upstream_rq_200",
    "cluster.to_ihttp.upstream_cx_connect_fail",
    "cluster.to_ihttp2.upstream_rq_200",
    "cluster.to_ihttp2.upstream_cx_total",
    "cluster.to_itcp.upstream_cx_total",
    "cluster.to_itcp.upstream_cx_connect_fail",
    "cluster.to_missing.upstream_cx_connect_fail",
    "cluster.to_missing.upstream_rq_503",
    "cluster.real.upstream_rq_200",
)


def stats(p: ProxyProcess) -> dict:
    port = int(p.bootstrap["admin"]["address"]["socket_address"]["port_value"])
    status, text = admin_get(port, "/stats?format=json")
    assert status == 200
    got = {s["name"]: s.get("value") for s in json.loads(text)["stats"] if "name" in s}
    return {k: got.get(k) for k in STATS}


def run(kind: str, b: dict, workdir: Path, concurrency: int = 1) -> tuple[dict, dict]:
    if kind == "envoy":
        proc = ProxyProcess.envoy(envoy_binary(), b, workdir)
    else:
        proc = ProxyProcess.sofamesh(sofamesh_command(), b, workdir, concurrency=concurrency)
    with proc as p:
        time.sleep(0.3)  # the start-up probes' connections (ProxyProcess.start) are over
        before = stats(p)
        seen = exercise(b)
        after = stats(p)
        # what the traffic counted (not the probes that found every public port accepting)
        return seen, {k: (after[k] or 0) - (before[k] or 0) for k in STATS}


@pytest.fixture(scope="module")
def envoy_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    up = Upstream()
    try:
        return run("envoy", bootstrap(up.port), tmp_path_factory.mktemp("envoy"))
    finally:
        up.stop()


def _check(env: dict, ours: dict) -> None:
    assert ours["get0"]["status"] == 200, ours["get0"]
    for k, want in env.items():
        assert ours[k] == want, (k, want, ours[k])


@pytest.mark.parametrize("concurrency", [1, 2])
def test_same_as_envoy(envoy_result: tuple[dict, dict], tmp_path: Path, concurrency: int):
    env_seen, env_stats = envoy_result
    # what Envoy 1.40 does, pinned: no XFF from the internal peer (it is no IP), a missing
    # internal listener is a connect failure (503 UF), and the listener's stats name
    assert env_seen["get0"]["upstream"]["headers"]["x-forwarded-for"] == "1.2.3.4"
    assert env_seen["no_xff"]["upstream"]["headers"]["x-forwarded-for"] is None
    assert env_seen["big_post"]["upstream"]["received"] == BIG
    assert env_seen["missing_http"]["status"] == 503
    assert "remote connection failure" in env_seen["missing_http"]["body"]
    assert env_seen["tcp_missing"] == b""
    assert env_stats["listener.envoy_internal_ihttp.downstream_cx_total"]
    assert env_stats["cluster.to_missing.upstream_cx_connect_fail"] == 2
    up = Upstream()
    try:
        b = bootstrap(up.port)
        seen, st = run("sofamesh", b, tmp_path, concurrency)
    finally:
        up.stop()
    _check(env_seen, seen)
    if concurrency == 1:  # with 2 workers, HTTP/1.1 reuse differs by the worker a client hits
        assert st == env_stats
    else:
        keep = [k for k in STATS if "downstream_cx_total" not in k and "cx_total" not in k]
        assert {k: st[k] for k in keep} == {k: env_stats[k] for k in keep}


def _validate(argv: list[str], b: dict, tmp_path: Path, name: str) -> tuple[int, str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(b))
    r = subprocess.run(
        [*argv, "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return r.returncode, r.stdout + r.stderr


def test_internal_listener_needs_the_bootstrap_extension(tmp_path: Path):
    b = bootstrap(free_port())
    del b["bootstrap_extensions"]
    _, out_e = _validate([envoy_binary()], b, tmp_path, "envoy")
    rc_s, out_s = _validate([*sofamesh_command(), "proxy"], b, tmp_path, "sofamesh")
    assert "InternalListener bootstrap extension is mandatory" in out_e
    assert rc_s != 0, out_s
    assert "envoy.bootstrap.internal_listener" in out_s, out_s
    # with it, both accept the bootstrap
    ok = bootstrap(free_port())
    _, out_e = _validate([envoy_binary()], ok, tmp_path, "envoy_ok")
    rc_s, out_s = _validate([*sofamesh_command(), "proxy"], ok, tmp_path, "sofamesh_ok")
    assert "error" not in out_e.lower(), out_e
    assert rc_s == 0, out_s


def test_passthrough_metadata_kinds(tmp_path: Path):
    """Host and cluster metadata pass through (tests/integration/istio/
    test_internal_passthrough.py); another kind is refused by name."""
    b = bootstrap(free_port())
    ts = b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    ts["passthrough_metadata"] = [
        {"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"},
        {"kind": {"cluster": {}}, "name": "istio"},
    ]
    rc, out = _validate([*sofamesh_command(), "proxy"], b, tmp_path, "meta")
    assert rc == 0, out
    ts["passthrough_metadata"].append({"kind": {"request": {}}, "name": "x"})
    rc, out = _validate([*sofamesh_command(), "proxy"], b, tmp_path, "meta2")
    assert rc != 0
    assert "passthrough_metadata[2].kind" in out and "not implemented by sofamesh" in out, out


def _typed(t: str, msg: dict) -> dict:
    return {"@type": _T + t, **msg}


def xds_bootstrap(up_port: int, cfg: Path, lport: int) -> dict:
    """LDS (a watched file) brings the public listener and the internal one; CDS the
    cluster to_ihttp_eds, which takes its internal address from EDS (files too)."""
    b = bootstrap(up_port)
    static = b["static_resources"]
    lds = [
        _public("pub_http", lport, _hcm("pub", "to_ihttp")),
        _internal("ihttp", _hcm("inner", "real", use_remote_address=True)),
    ]
    routes = lds[0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    routes["virtual_hosts"][0]["routes"].insert(
        0, {"match": {"prefix": "/eds"}, "route": {"cluster": "to_ihttp_eds"}}
    )
    ep = {"envoy_internal_address": {"server_listener_name": "ihttp", "endpoint_id": "x"}}
    cla = {
        "cluster_name": "to_ihttp_eds",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": ep}}]}],
    }
    listener_t = "envoy.config.listener.v3.Listener"
    (cfg / "lds.json").write_text(
        json.dumps({"version_info": "1", "resources": [_typed(listener_t, x) for x in lds]})
    )
    cla_t = "envoy.config.endpoint.v3.ClusterLoadAssignment"
    (cfg / "eds.json").write_text(
        json.dumps({"version_info": "1", "resources": [_typed(cla_t, cla)]})
    )
    static["listeners"] = []
    eds_cluster = {
        "name": "to_ihttp_eds",
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {
            "eds_config": {"path_config_source": {"path": str(cfg / "eds.json")}}
        },
        "transport_socket": INTERNAL_UPSTREAM,
    }
    cluster_t = "envoy.config.cluster.v3.Cluster"
    (cfg / "cds.json").write_text(
        json.dumps({"version_info": "1", "resources": [_typed(cluster_t, eds_cluster)]})
    )
    b["node"] = {"id": "internal-test", "cluster": "internal-test"}
    b["dynamic_resources"] = {
        "lds_config": {"path_config_source": {"path": str(cfg / "lds.json")}},
        "cds_config": {"path_config_source": {"path": str(cfg / "cds.json")}},
    }
    return b


def _eventually_ok(port: int, path: str) -> dict:
    deadline = time.monotonic() + 15
    while True:
        try:
            got = _http(port, "GET", path, {"x-forwarded-for": "5.6.7.8", "x-in": "lds"})
            if got["status"] == 200:
                return got
        except OSError:
            got = {}
        if time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["envoy", "sofamesh", "sofamesh-2-workers"])
def test_internal_listener_from_lds_and_internal_address_from_eds(tmp_path: Path, kind: str):
    up = Upstream()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    lport = free_port()
    b = xds_bootstrap(up.port, cfg, lport)
    if kind == "envoy":
        proc = ProxyProcess.envoy(envoy_binary(), b, tmp_path)
    else:
        workers = 2 if kind.endswith("workers") else 1
        proc = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path, concurrency=workers)
    try:
        with proc:
            got = [_eventually_ok(lport, p) for p in ("/lds", "/eds")]
            missing = _http(lport, "GET", "/missing", {})
    finally:
        up.stop()
    for g, path in zip(got, ("/lds", "/eds"), strict=True):
        assert g["status"] == 200, g
        assert g["upstream"]["path"] == path
        assert g["upstream"]["headers"] == {
            "x-forwarded-for": "5.6.7.8",  # the internal peer is not appended
            "x-envoy-external-address": None,
            "x-forwarded-proto": "http",
            "x-in": "lds",
        }
    assert missing["status"] == 503
    assert "remote connection failure" in missing["body"]
