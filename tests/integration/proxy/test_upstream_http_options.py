"""A cluster's HttpProtocolOptions.common_http_protocol_options (idle_timeout,
max_connection_duration, max_requests_per_connection) against Envoy 1.40 on one bootstrap:
the upstream sees its connections closed at the same moments, the same connections reused,
and the counters (upstream_cx_idle_timeout, upstream_cx_max_duration_reached) agree.
HTTP/1.1 upstreams (a threaded server here) and h2c ones (tests/support/h2_peers.py).
Istio's passthrough clusters carry such options (istiod's passthroughHttpProtocolOptions).
"""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.proxy.conftest import HCM, ROUTER, cluster
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.h2_peers import H2RecordingUpstream
from tests.support.tcp_echo import ThreadedServer

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SLOW = 1.5  # seconds the upstreams take over a slow request


class Conns:
    """When each upstream connection opened and closed (monotonic), by its number."""

    def __init__(self) -> None:
        self.opened: dict[int, float] = {}
        self.closed: dict[int, float] = {}
        self.lock = threading.Lock()
        self.n = 0

    def open(self) -> int:
        with self.lock:
            self.n += 1
            self.opened[self.n] = time.monotonic()
            return self.n

    def close(self, cid: int) -> None:
        with self.lock:
            self.closed[cid] = time.monotonic()

    def wait_closed(self, cid: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if cid in self.closed:
                    return self.closed[cid]
            time.sleep(0.01)
        return None


class H1Upstream:
    """HTTP/1.1 keep-alive upstream: answers `conn=<number>`; /slow after SLOW seconds."""

    def __init__(self) -> None:
        self.conns = Conns()
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream._serve(self.request, upstream.conns.open())

        self.server = ThreadedServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _serve(self, conn: socket.socket, cid: int) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                if head.split(b" ", 2)[1] == b"/slow":
                    time.sleep(SLOW)
                body = b"conn=%d" % cid
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        finally:
            self.conns.close(cid)
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class H2Upstream(H2RecordingUpstream):
    """h2c upstream (the `h2` library) that also notes when its connections open and close."""

    def __init__(self) -> None:
        super().__init__()
        self.conns = Conns()

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        cid = self.conns.open()
        try:
            super()._serve(sock, conn_id)
        finally:
            self.conns.close(cid)


def _cluster(name: str, port: int, common: dict, h2: bool = False) -> dict:
    proto = {"http2_protocol_options": {}} if h2 else {"http_protocol_options": {}}
    options = {
        "@type": "type.googleapis.com/" + HPO,
        "common_http_protocol_options": common,
        "explicit_http_config": proto,
    }
    return cluster(
        name, [port], connect_timeout="2s", typed_extension_protocol_options={HPO: options}
    )


def _listener(name: str, port: int) -> dict:
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": name, "timeout": "10s"}}
                    ],
                }
            ]
        },
        "http_filters": [ROUTER],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


# cluster -> (common_http_protocol_options, HTTP/2 upstream?)
CLUSTERS = {
    "idle": ({"idle_timeout": "1s"}, False),
    "keep": ({"idle_timeout": "1s"}, False),
    "h2idle": ({"idle_timeout": "1s"}, True),
    "dur": ({"max_connection_duration": "1s"}, False),
    "h2dur": ({"max_connection_duration": "1s"}, True),
    "maxrq": ({"max_requests_per_connection": 2}, False),
}


def _get(port: int, path: str = "/", action: str = "") -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers={"x-upstream-action": action} if action else {})
        r = c.getresponse()
        return f"{r.status} {r.read().decode()}"
    finally:
        c.close()


def _counters(admin: int, names: tuple[str, ...]) -> dict[str, int]:
    _, text = admin_get(admin, "/stats")
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        cl, _, stat = k.removeprefix("cluster.").partition(".")
        if k.startswith("cluster.") and cl in CLUSTERS and stat in names:
            out[f"{cl}.{stat}"] = int(v)
    return out


def run(kind: str, tmp_path) -> dict:
    ups = {n: (H2Upstream().start() if h2 else H1Upstream()) for n, (_, h2) in CLUSTERS.items()}
    ports = {n: free_port() for n in CLUSTERS}
    admin = free_port()
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [_listener(n, ports[n]) for n in CLUSTERS],
            "clusters": [_cluster(n, ups[n].port, c, h2) for n, (c, h2) in CLUSTERS.items()],
        },
    }
    proc = (
        ProxyProcess.envoy(envoy_binary(), boot, tmp_path / kind)
        if kind == "envoy"
        else ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / kind)
    )
    out: dict = {}
    try:
        with proc, ThreadPoolExecutor(4) as pool:
            out.update(_idle_cases(ports, ups))
            out.update(_duration_cases(ports, ups, pool))
            out["maxrq"] = [_get(ports["maxrq"]) for _ in range(3)]
            out["maxrq_first_closed"] = ups["maxrq"].conns.wait_closed(1, 2) is not None
            out["counters"] = _counters(
                admin, ("upstream_cx_idle_timeout", "upstream_cx_max_duration_reached")
            )
        out["log_errors"] = [ln for ln in proc.log_text().splitlines() if "Traceback" in ln]
    finally:
        for u in ups.values():
            u.close() if isinstance(u, H1Upstream) else u.stop()
    return out


def _idle_cases(ports: dict, ups: dict) -> dict:
    """idle_timeout 1s: an idle connection closes after about a second (HTTP/1.1, h2c); one
    used every 0.3 s stays open, and closes a second after its last request."""
    out: dict = {}
    t0 = time.monotonic()
    out["idle"] = _get(ports["idle"])
    out["h2idle"] = _get(ports["h2idle"]).split(" ")[0]
    keep = []
    for _ in range(6):
        keep.append(_get(ports["keep"]))
        time.sleep(0.3)
    out["keep"] = keep
    out["keep_open_while_used"] = 1 not in ups["keep"].conns.closed
    last = time.monotonic() - 0.3
    for name, since in (("idle", t0), ("h2idle", t0), ("keep", last)):
        closed = ups[name].conns.wait_closed(1, 3)
        out[f"{name}_closed_after"] = None if closed is None else 0.8 < closed - since < 2.5
    return out


def _duration_cases(ports: dict, ups: dict, pool: ThreadPoolExecutor) -> dict:
    """max_connection_duration 1s: HTTP/1.1, a connection serving a slow request closes
    after its response, an idle one at once; h2c, a slow stream's connection drains and
    closes after it."""
    out: dict = {}
    slow = pool.submit(_get, ports["dur"], "/slow")
    h2slow = pool.submit(_get, ports["h2dur"], "/", f"delay={int(SLOW * 1000)}")
    time.sleep(0.2)
    out["dur_quick"] = _get(ports["dur"])  # conn 1 busy: conn 2, idle after this
    out["dur_slow"] = slow.result()
    done = time.monotonic()
    out["h2dur"] = h2slow.result().split(" ")[0]
    h2done = time.monotonic()
    conns = ups["dur"].conns
    c1, c2 = conns.wait_closed(1, 2), conns.wait_closed(2, 2)
    out["dur_busy_closed_after_response"] = c1 is not None and -0.1 < c1 - done < 0.5
    out["dur_idle_closed_at_max"] = c2 is not None and 0.8 < c2 - conns.opened[2] < 1.5
    h2c1 = ups["h2dur"].conns.wait_closed(1, 2)
    out["h2dur_closed_after_stream"] = h2c1 is not None and -0.1 < h2c1 - h2done < 0.5
    return out


def test_upstream_http_options_as_envoy(tmp_path):
    envoy = run("envoy", tmp_path)
    ours = run("sofamesh", tmp_path)
    expected = {
        "idle": "200 conn=1",
        "h2idle": "200",
        "keep": ["200 conn=1"] * 6,
        "keep_open_while_used": True,
        "idle_closed_after": True,
        "h2idle_closed_after": True,
        "keep_closed_after": True,
        "dur_quick": "200 conn=2",
        "dur_slow": "200 conn=1",
        "h2dur": "200",
        "dur_busy_closed_after_response": True,
        "dur_idle_closed_at_max": True,
        "h2dur_closed_after_stream": True,
        "maxrq": ["200 conn=1", "200 conn=1", "200 conn=2"],
        "maxrq_first_closed": True,
    }
    assert {k: v for k, v in envoy.items() if k != "counters"} == {**expected, "log_errors": []}
    assert {k: v for k, v in envoy["counters"].items() if v} == {
        "idle.upstream_cx_idle_timeout": 1,
        "keep.upstream_cx_idle_timeout": 1,
        "h2idle.upstream_cx_idle_timeout": 1,
        "dur.upstream_cx_max_duration_reached": 2,
        "h2dur.upstream_cx_max_duration_reached": 1,
    }
    assert ours == envoy


ISTIO_PASSTHROUGH = {
    "name": "InboundPassthroughCluster",
    "type": "ORIGINAL_DST",
    "connect_timeout": "10s",
    "lb_policy": "CLUSTER_PROVIDED",
    "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
    "typed_extension_protocol_options": {
        HPO: {
            "@type": "type.googleapis.com/" + HPO,
            "common_http_protocol_options": {"idle_timeout": "300s"},
            "use_downstream_protocol_config": {
                "http_protocol_options": {},
                "http2_protocol_options": {},
            },
        }
    },
}


def _validate(argv: list[str], boot: dict, tmp_path, name: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(boot))
    return subprocess.run(
        [*argv, "--mode", "validate", "-c", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_istiod_passthrough_shape_validates(tmp_path):
    """istiod's PassthroughCluster / InboundPassthroughCluster (cluster_builder.go): loaded
    by Envoy 1.40 and sofamesh alike."""
    boot = {"static_resources": {"clusters": [ISTIO_PASSTHROUGH]}}
    for name, argv in (("envoy", [envoy_binary()]), ("sofamesh", [*sofamesh_command(), "proxy"])):
        r = _validate(argv, boot, tmp_path, name)
        assert r.returncode == 0, (name, r.stderr[-2000:])


@pytest.mark.parametrize(
    ("common", "field"),
    [
        ({"max_headers_count": 50}, "max_headers_count"),
        ({"max_stream_duration": "5s"}, "max_stream_duration"),
        ({"headers_with_underscores_action": "REJECT_REQUEST"}, "headers_with_underscores_action"),
    ],
)
def test_other_fields_refused_by_name(tmp_path, common, field):
    """Valid for Envoy; sofamesh refuses them by path rather than ignore them."""
    c = json.loads(json.dumps(ISTIO_PASSTHROUGH))
    c["typed_extension_protocol_options"][HPO]["common_http_protocol_options"] = common
    boot = {"static_resources": {"clusters": [c]}}
    assert _validate([envoy_binary()], boot, tmp_path, "envoy").returncode == 0
    r = _validate([*sofamesh_command(), "proxy"], boot, tmp_path, "sofamesh")
    assert r.returncode != 0
    assert f".common_http_protocol_options.{field}: " in r.stderr, r.stderr[-2000:]
