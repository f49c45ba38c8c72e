"""HTTP CONNECT terminated by the HTTP connection manager (route `connect_matcher`, route
`upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]`, HCM
`http2_protocol_options.allow_connect`): one bootstrap through Envoy 1.40 and sofamesh, the
same clients to both. HTTP/1.1 `CONNECT host:port` and HTTP/2 CONNECT streams reach a TCP
echo server through a raw TCP upstream: 200, bytes both ways (HTTP/2: DATA frames under
flow control), the client's half close ends the upstream's request side and the echo
server's close ends the tunnel. Refusals: no CONNECT upgrade (403), a websocket-only route
(403), no route (404), CONNECT allowed without connect_config (forwarded as HTTP: the echo
server's answer is no HTTP, 502). What the clients get and the main stats must agree.

Then tcp_proxy `tunneling_config` in front of that terminating HCM (client -> tcp_proxy ->
CONNECT over HTTP/2 or HTTP/1.1 -> terminating HCM -> echo): the hostname (literal or
%DOWNSTREAM_LOCAL_ADDRESS%) and `headers_to_add` must reach the terminating side (its
routes need them, else 404 and the client's connection is reset), bytes both ways.

Not compared (known divergences): Envoy resets a refused CONNECT's connection (RST) where
sofamesh closes it, and counts downstream_rq_rx_reset / response_before_rq_complete for
the refusals; the order of content-length and connection: close in local replies."""

from __future__ import annotations

import pprint
import socket
import socketserver
import threading
import time

import h2.config
import h2.connection
import h2.events
import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.h2raw import END_HEADERS, GOAWAY, HEADERS, RST_STREAM, H2Client, headers

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CONNECT_TERM = [{"upgrade_type": "CONNECT", "connect_config": {}}]
BIG = bytes(range(256)) * 1024  # 256 KiB: beyond the HTTP/2 initial windows


class _Echo(socketserver.BaseRequestHandler):
    """Echoes until the client's FIN, then closes (the tunnel's end)."""

    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _sa(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _listener(name: str, port: int, routes: list, hcm_upgrades: list | None = None) -> dict:
    hcm: dict = {
        "@type": HCM,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        "http2_protocol_options": {"allow_connect": True},
    }
    if hcm_upgrades is not None:
        hcm["upgrade_configs"] = hcm_upgrades
    return {
        "name": name,
        "address": _sa(port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _connect_route(upgrades: list | None) -> dict:
    r: dict = {"match": {"connect_matcher": {}}, "route": {"cluster": "echo"}}
    if upgrades is not None:
        r["route"]["upgrade_configs"] = upgrades
    return r


NAMES = ("term", "h2term", "fwd", "noroute", "noupg", "ws", "h2noupg")


def bootstrap(ports: dict[str, int], admin: int, echo: int) -> dict:
    hcm_connect = [{"upgrade_type": "CONNECT"}]
    return {
        "admin": {"address": _sa(admin)},
        "static_resources": {
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _sa(echo)}}]}],
                    },
                }
            ],
            "listeners": [
                _listener("term", ports["term"], [_connect_route(CONNECT_TERM)]),
                _listener("h2term", ports["h2term"], [_connect_route(CONNECT_TERM)]),
                # CONNECT allowed by the HCM, no connect_config: forwarded as HTTP
                _listener("fwd", ports["fwd"], [_connect_route(None)], hcm_connect),
                _listener(
                    "noroute",
                    ports["noroute"],
                    [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}],
                    hcm_connect,
                ),
                _listener("noupg", ports["noupg"], [_connect_route(None)]),
                _listener("ws", ports["ws"], [_connect_route([{"upgrade_type": "websocket"}])]),
                _listener("h2noupg", ports["h2noupg"], [_connect_route(None)]),
            ],
        },
    }


def _recv_until_eof(s: socket.socket, timeout: float = 3.0) -> tuple[bytes, str]:
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return out, "eof"
            out += d
    except TimeoutError:
        return out, "timeout"
    except ConnectionResetError:
        return out, "closed"


def _recv_head(s: socket.socket, timeout: float = 3.0) -> tuple[bytes, bytes]:
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _head_shape(head: bytes) -> tuple:
    """The status line and the header names (date's value varies)."""
    lines = head.split(b"\r\n")
    return lines[0].decode(), sorted(ln.split(b":", 1)[0].lower().decode() for ln in lines[1:])


def h1_tunnel(port: int, payload: bytes) -> dict:
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        head, rest = _recv_head(s)
        status, names = _head_shape(head)
        got = rest
        s.sendall(payload)
        s.settimeout(3.0)
        while len(got) < len(payload):
            d = s.recv(65536)
            if not d:
                break
            got += d
        s.shutdown(socket.SHUT_WR)  # half close: the echo server's close ends the tunnel
        tail, end = _recv_until_eof(s)
        return {
            "status": status,
            "headers": names,
            "echoed": got == payload,
            "n": len(got),
            "after_half_close": tail,
            "end": end,
        }
    finally:
        s.close()


def h1_refused(port: int) -> dict:
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        data, _end = _recv_until_eof(s)
        head, _, body = data.partition(b"\r\n\r\n")
        status, names = _head_shape(head)
        return {"status": status, "headers": names, "body": body}
    finally:
        s.close()


class _H2:
    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(3.0)
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.c.initiate_connection()
        self.flush()

    def flush(self) -> None:
        out = self.c.data_to_send()
        if out:
            self.s.sendall(out)

    def events(self) -> list:
        d = self.s.recv(65536)
        if not d:
            raise ConnectionError("closed")
        evs = self.c.receive_data(d)
        for ev in evs:
            if isinstance(ev, h2.events.DataReceived):
                self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        self.flush()
        return evs


def h2_connect(port: int, payload: bytes | None) -> dict:
    """An HTTP/2 CONNECT stream: the response, then (payload not None) the tunnel: payload
    out (as the windows allow), echoed back, END_STREAM out, END_STREAM (or a reset) in."""
    cl = _H2(port)
    out: dict = {"status": None, "data": b"", "ended": False, "reset": None}
    try:
        cl.c.send_headers(1, [(":method", "CONNECT"), (":authority", "example.com:443")])
        cl.flush()
        sent = 0
        half_closed = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if out["status"] == "200" and payload is not None:
                while sent < len(payload):
                    n = min(
                        cl.c.local_flow_control_window(1),
                        cl.c.max_outbound_frame_size,
                        len(payload) - sent,
                    )
                    if n <= 0:
                        break
                    cl.c.send_data(1, payload[sent : sent + n])
                    sent += n
                if sent == len(payload) and len(out["data"]) >= len(payload) and not half_closed:
                    cl.c.end_stream(1)
                    half_closed = True
                cl.flush()
            try:
                evs = cl.events()
            except (ConnectionError, TimeoutError, OSError):
                break
            for ev in evs:
                if isinstance(ev, h2.events.ResponseReceived):
                    out["status"] = dict(ev.headers).get(b":status", b"").decode()
                elif isinstance(ev, h2.events.DataReceived):
                    out["data"] += ev.data
                elif isinstance(ev, h2.events.StreamEnded):
                    out["ended"] = True
                elif isinstance(ev, h2.events.StreamReset):
                    out["reset"] = int(ev.error_code)
            if out["ended"] or out["reset"] is not None:
                if payload is None or out["status"] != "200":
                    break
                if half_closed:
                    break
        if payload is not None:
            out["echoed"] = out["data"] == payload
            out["n"] = len(out["data"])
            out["data"] = b""
        return out
    finally:
        cl.s.close()


def h2_refused(port: int) -> dict:
    """A refused HTTP/2 CONNECT, frame by frame: Envoy drains the connection (GOAWAY with
    the largest stream id) before its 403."""
    c = H2Client(port).handshake()
    try:
        c.send(
            headers(
                1, c.block([(":method", "CONNECT"), (":authority", "example.com:443")]), END_HEADERS
            )
        )
        o = c.outcome(1)
        return {
            "status": o.status,
            "frames": [
                (f.type, f.flags, f.payload.hex() if f.type == GOAWAY else "")
                for f in o.frames
                if f.type in (GOAWAY, HEADERS, RST_STREAM)
            ],
        }
    finally:
        c.close()


STATS = (
    "downstream_rq_total",
    "downstream_rq_http1_total",
    "downstream_rq_http2_total",
    "downstream_rq_2xx",
    "downstream_rq_4xx",
    "downstream_rq_5xx",
    "downstream_rq_completed",
    "downstream_cx_upgrades_total",
    "downstream_rq_ws_on_non_ws_route",
    "no_route",
)
CLUSTER_STATS = (
    "upstream_rq_total",
    "upstream_rq_200",
    "upstream_rq_502",
    "upstream_rq_completed",
    "upstream_cx_total",
)


def _stats(admin: int) -> dict:
    _, text = admin_get(admin, "/stats")
    kv = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if v.strip().lstrip("-").isdigit():
            kv[k] = int(v)
    out = {}
    for n in NAMES:
        for st in STATS:
            out[f"http.{n}.{st}"] = kv.get(f"http.{n}.{st}", 0)
    for st in CLUSTER_STATS:
        out[f"cluster.echo.{st}"] = kv.get(f"cluster.echo.{st}", 0)
    return out


def _run(kind: str, tmp_path) -> dict:
    echo = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    ports = {n: free_port() for n in NAMES}
    admin = free_port()
    b = bootstrap(ports, admin, echo.server_address[1])
    if kind == "envoy":
        proc = ProxyProcess.envoy(envoy_binary(), b, tmp_path / kind)
    else:
        proc = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / kind)
    res: dict = {}
    try:
        with proc:
            res["h1-small"] = h1_tunnel(ports["term"], b"hello through the tunnel")
            res["h1-big"] = h1_tunnel(ports["term"], BIG)
            for n in ("fwd", "noroute", "noupg", "ws"):
                res[f"h1-{n}"] = h1_refused(ports[n])
            res["h2-small"] = h2_connect(ports["h2term"], b"hello over h2")
            res["h2-big"] = h2_connect(ports["h2term"], BIG)
            res["h2-noupg"] = h2_refused(ports["h2noupg"])
            time.sleep(0.5)
            res["stats"] = _stats(admin)
    finally:
        echo.shutdown()
        echo.server_close()
    return res


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("connect")
    return {"envoy": _run("envoy", tmp), "sofamesh": _run("sofamesh", tmp)}


CASES = (
    "h1-small",
    "h1-big",
    "h1-fwd",
    "h1-noroute",
    "h1-noupg",
    "h1-ws",
    "h2-small",
    "h2-big",
    "h2-noupg",
)


@pytest.mark.parametrize("case", CASES)
def test_connect_outcome(outcomes, case):
    e, s = outcomes["envoy"][case], outcomes["sofamesh"][case]
    assert s == e, f"{case}:\nenvoy    {pprint.pformat(e)}\nsofamesh {pprint.pformat(s)}"


def test_connect_tunnels_work(outcomes):
    """Not only equal: the tunnels carried the bytes (the test can fail on both)."""
    for kind in ("envoy", "sofamesh"):
        r = outcomes[kind]
        assert r["h1-small"]["status"] == "HTTP/1.1 200 OK" and r["h1-small"]["echoed"], kind
        assert r["h1-big"]["echoed"] and r["h1-big"]["end"] == "eof", kind
        assert r["h2-big"]["status"] == "200" and r["h2-big"]["echoed"], kind
        assert r["h2-big"]["ended"], kind
        assert r["h1-noupg"]["status"].startswith("HTTP/1.1 403"), kind
        assert r["h1-noroute"]["status"].startswith("HTTP/1.1 404"), kind


def test_connect_stats(outcomes):
    e, s = outcomes["envoy"]["stats"], outcomes["sofamesh"]["stats"]
    diff = {k: (e[k], s[k]) for k in e if e[k] != s[k]}
    assert not diff, f"(envoy, sofamesh): {pprint.pformat(diff)}"


# -- tcp_proxy tunneling_config: client -> tcp_proxy (CONNECT over HTTP/2 or HTTP/1.1) ->
# -- the terminating HCM above -> echo -------------------------------------------------

TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
H2_OPTS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
TUNNELS = ("t_h2", "t_h1", "t_local", "t_nohdr", "t_h1_nohdr")


def _tunnel_listener(name: str, port: int, cluster: str, hostname: str, tag: bool) -> dict:
    tc: dict = {"hostname": hostname}
    if tag:
        tc["headers_to_add"] = [{"header": {"key": "x-tunnel-tag", "value": "t1"}}]
    return {
        "name": name,
        "address": _sa(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP,
                            "stat_prefix": name,
                            "cluster": cluster,
                            "tunneling_config": tc,
                        },
                    }
                ]
            }
        ],
    }


def _cluster(name: str, port: int, h2: bool) -> dict:
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _sa(port)}}]}],
        },
    }
    if h2:
        c["typed_extension_protocol_options"] = H2_OPTS
    return c


def tunnel_bootstrap(ports: dict[str, int], admin: int, echo: int) -> dict:
    """The terminating HCM (tterm) routes a CONNECT to example.com:443 carrying the header
    the tunnels add, or to the address of t_local (its %DOWNSTREAM_LOCAL_ADDRESS%); any
    other CONNECT gets 404, so a tunnel that sends the wrong hostname or header fails."""
    tagged = _connect_route(CONNECT_TERM)
    tagged["match"]["headers"] = [{"name": "x-tunnel-tag", "string_match": {"exact": "t1"}}]
    term = _listener("tterm", ports["tterm"], [])
    term["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"] = [
        {"name": "tagged", "domains": ["example.com:443"], "routes": [tagged]},
        {
            "name": "local",
            "domains": [f"127.0.0.1:{ports['t_local']}"],
            "routes": [_connect_route(CONNECT_TERM)],
        },
    ]
    return {
        "admin": {"address": _sa(admin)},
        "static_resources": {
            "clusters": [
                _cluster("echo", echo, False),
                _cluster("term_h2", ports["tterm"], True),
                _cluster("term_h1", ports["tterm"], False),
            ],
            "listeners": [
                term,
                _tunnel_listener("t_h2", ports["t_h2"], "term_h2", "example.com:443", True),
                _tunnel_listener("t_h1", ports["t_h1"], "term_h1", "example.com:443", True),
                _tunnel_listener(
                    "t_local", ports["t_local"], "term_h2", "%DOWNSTREAM_LOCAL_ADDRESS%", False
                ),
                _tunnel_listener("t_nohdr", ports["t_nohdr"], "term_h2", "example.com:443", False),
                _tunnel_listener(
                    "t_h1_nohdr", ports["t_h1_nohdr"], "term_h1", "example.com:443", False
                ),
            ],
        },
    }


def tcp_through(port: int, payload: bytes) -> dict:
    """Bytes through a tunnel listener: echoed, then our half close and the tunnel's end.
    A failed tunnel closes the client's connection; whether by FIN or by RST depends on
    whether the proxy had read the client's bytes (timing, in Envoy too): "closed"."""
    s = socket.create_connection(("127.0.0.1", port))
    got = b""
    end = "open"
    try:
        s.settimeout(3.0)
        s.sendall(payload)
        while len(got) < len(payload):
            d = s.recv(65536)
            if not d:
                end = "closed"
                break
            got += d
        if end == "open":
            s.shutdown(socket.SHUT_WR)
            tail, end = _recv_until_eof(s)
            got += tail
            end = "eof" if end == "eof" else end
    except TimeoutError:
        end = "timeout"
    except (ConnectionResetError, BrokenPipeError):
        end = "closed"
    finally:
        s.close()
    return {"echoed": got == payload, "n": len(got), "end": end}


TUNNEL_STATS = (
    ["http.tterm." + s for s in STATS]
    + [f"tcp.{t}.downstream_cx_total" for t in TUNNELS]
    + [
        f"cluster.{c}.{s}"
        for c in ("term_h2", "term_h1", "echo")
        for s in ("upstream_cx_total", "upstream_rq_total")
    ]
)


def _run_tunnels(kind: str, tmp_path) -> dict:
    echo = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    ports = {n: free_port() for n in ("tterm", *TUNNELS)}
    admin = free_port()
    b = tunnel_bootstrap(ports, admin, echo.server_address[1])
    if kind == "envoy":
        proc = ProxyProcess.envoy(envoy_binary(), b, tmp_path / kind)
    else:
        proc = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / kind)
    res: dict = {}
    try:
        with proc:
            res["t_h2-small"] = tcp_through(ports["t_h2"], b"through an h2 tunnel")
            res["t_h2-big"] = tcp_through(ports["t_h2"], BIG)
            res["t_h1-small"] = tcp_through(ports["t_h1"], b"through an h1 tunnel")
            res["t_h1-big"] = tcp_through(ports["t_h1"], BIG)
            res["t_local"] = tcp_through(ports["t_local"], b"to my own address")
            res["t_nohdr"] = tcp_through(ports["t_nohdr"], b"refused")
            res["t_h1_nohdr"] = tcp_through(ports["t_h1_nohdr"], b"refused")
            time.sleep(0.5)
            _, text = admin_get(admin, "/stats")
            kv = dict(ln.partition(": ")[::2] for ln in text.splitlines())
            res["stats"] = {k: kv.get(k, "0") for k in TUNNEL_STATS}
    finally:
        echo.shutdown()
        echo.server_close()
    return res


@pytest.fixture(scope="module")
def tunnel_outcomes(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("tunnel")
    return {"envoy": _run_tunnels("envoy", tmp), "sofamesh": _run_tunnels("sofamesh", tmp)}


TUNNEL_CASES = (
    "t_h2-small",
    "t_h2-big",
    "t_h1-small",
    "t_h1-big",
    "t_local",
    "t_nohdr",
    "t_h1_nohdr",
)


@pytest.mark.parametrize("case", TUNNEL_CASES)
def test_tunnel_outcome(tunnel_outcomes, case):
    e, s = tunnel_outcomes["envoy"][case], tunnel_outcomes["sofamesh"][case]
    assert s == e, f"{case}:\nenvoy    {pprint.pformat(e)}\nsofamesh {pprint.pformat(s)}"


def test_tunnels_work(tunnel_outcomes):
    for kind in ("envoy", "sofamesh"):
        r = tunnel_outcomes[kind]
        for case in ("t_h2-big", "t_h1-big", "t_local"):
            assert r[case]["echoed"] and r[case]["end"] == "eof", (kind, case, r[case])
        for case in ("t_nohdr", "t_h1_nohdr"):
            assert r[case] == {"echoed": False, "n": 0, "end": "closed"}, (kind, case, r[case])


def test_tunnel_stats(tunnel_outcomes):
    e, s = tunnel_outcomes["envoy"]["stats"], tunnel_outcomes["sofamesh"]["stats"]
    diff = {k: (e[k], s[k]) for k in e if e[k] != s[k]}
    assert not diff, f"(envoy, sofamesh): {pprint.pformat(diff)}"
