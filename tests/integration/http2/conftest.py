"""HTTP/2 and gRPC through a proxy: the same bootstrap run by real Envoy 1.40 and by the
`sofamesh proxy` command, a real grpcio server behind them (generic handlers over raw
bytes: no generated code), and an HTTP/1.1 recording upstream.

    def test_x(proxies):          # parametrized: "envoy", "sofamesh"
        p = proxies()             # starts the proxy for this parameter
        with grpc.insecure_channel(p.target) as ch: ...
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.http_upstream import RecordingUpstream

SERVICE = "sofamesh.test.Echo"
MAX_MSG = 32 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MSG),
    ("grpc.max_receive_message_length", MAX_MSG),
    ("grpc.enable_retries", 0),
]


@dataclass
class EchoServer:
    """A grpcio server: Unary (echo; "fail:CODE:msg" aborts; "sleep:S" sleeps), Stream
    (server streaming: N replies), Collect (client streaming: joined), Chat (bidi echo)."""

    port: int = 0
    server: Any = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    seen_metadata: list = field(default_factory=list)
    calls: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> EchoServer:
        def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
            self.seen_metadata.append(tuple(ctx.invocation_metadata()))
            if req.startswith(b"fail:"):
                _, code, msg = req.decode().split(":", 2)
                ctx.abort(grpc.StatusCode[code], msg)
            if req.startswith(b"flaky:"):
                # flaky:N:key: UNAVAILABLE for the first N calls with this key
                _, n, key = req.decode().split(":", 2)
                with self.lock:
                    self.calls[key] = self.calls.get(key, 0) + 1
                    k = self.calls[key]
                if k <= int(n):
                    ctx.abort(grpc.StatusCode.UNAVAILABLE, "try again")
                return b"ok after %d" % k
            if req.startswith(b"sleep:"):
                end = time.monotonic() + float(req[6:])
                while time.monotonic() < end and ctx.is_active():
                    time.sleep(0.01)
                if not ctx.is_active():
                    self.cancelled.set()
                return b"woke"
            ctx.set_trailing_metadata((("x-trailer", "t-" + str(len(req))),))
            return req

        def stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
            n = int(req)
            finished = []
            # grpcio stops iterating a cancelled call's generator: its end is the sign
            ctx.add_callback(lambda: finished or self.cancelled.set())
            for i in range(n):
                if not ctx.is_active():
                    self.cancelled.set()
                    return
                yield b"%d" % i
                if n > 1000:
                    time.sleep(0.001)
            finished.append(True)

        def collect(it: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
            return b"|".join(it)

        def chat(it: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
            for m in it:
                yield b"re:" + m

        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Collect": grpc.stream_unary_rpc_method_handler(collect),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        }
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=CHANNEL_OPTIONS[:2] + [("grpc.so_reuseport", 0)],
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0)


def h2_request(
    port: int, headers: list[tuple[str, str]], body: bytes = b"", timeout: float = 10.0
) -> dict:
    """One request over a fresh h2c connection with the `h2` library (an independent
    HTTP/2 implementation): {"headers", "data", "trailers", "reset"} as received."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers, end_stream=not body)
    if body:
        conn.send_data(sid, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    out: dict = {"headers": None, "data": b"", "trailers": None, "reset": None}
    done = False
    try:
        while not done:
            chunk = sock.recv(65536)
            if not chunk:
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    out["headers"] = [(k.decode(), v.decode()) for k, v in ev.headers]
                elif isinstance(ev, h2.events.DataReceived):
                    out["data"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived):
                    out["trailers"] = [(k.decode(), v.decode()) for k, v in ev.headers]
                elif isinstance(ev, h2.events.StreamReset):
                    out["reset"] = ev.error_code
                    done = True
                elif isinstance(ev, h2.events.StreamEnded):
                    done = True
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return out


def _cluster(name: str, port: int, h2: bool | str, **extra: Any) -> dict:
    """h2: False (HTTP/1.1), True (HTTP/2), "downstream" (the request's protocol)."""
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if h2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                **(
                    {"use_downstream_protocol_config": {"http2_protocol_options": {}}}
                    if h2 == "downstream"
                    else {"explicit_http_config": {"http2_protocol_options": {}}}
                ),
            }
        }
    c.update(extra)
    return c


def bootstrap(
    port: int,
    admin: int,
    grpc_port: int,
    h1_port: int,
    dead_port: int,
    *,
    codec_type: str = "AUTO",
    routes: list | None = None,
    hcm: dict | None = None,
    clusters: list | None = None,
    filters: list | None = None,
    top: dict | None = None,
) -> dict:
    """One listener (HCM `codec_type`), clusters: grpc (HTTP/2 to the echo server), h1
    (HTTP/1.1 recording upstream), h2dead (HTTP/2, nothing listening); `top`: more
    bootstrap fields."""
    r = routes or [
        {"match": {"prefix": "/" + SERVICE + "/", "grpc": {}}, "route": {"cluster": "grpc"}},
        {"match": {"prefix": "/dead/"}, "route": {"cluster": "h2dead"}},
        {"match": {"prefix": "/h2/"}, "route": {"cluster": "grpc"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "h1"}},
    ]
    h = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": codec_type,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": r}]},
        "http_filters": [
            *(filters or []),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    h.update(hcm or {})
    return {
        **(top or {}),
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": h,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _cluster("grpc", grpc_port, True),
                _cluster("h1", h1_port, False),
                _cluster("h2dead", dead_port, True),
                *(clusters or []),
            ],
        },
    }


@dataclass
class Running:
    kind: str
    port: int
    admin: int
    proc: ProxyProcess
    echo: EchoServer
    upstream: RecordingUpstream

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        _, text = admin_get(self.admin, "/stats")
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
        return out

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)


def _distinct(n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out:
            out.append(p)
    return out


@pytest.fixture(params=["envoy", "sofamesh"])
def proxies(request: Any, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Starts the parametrized proxy (Envoy 1.40 or `sofamesh proxy`) in front of a fresh
    gRPC echo server and HTTP/1.1 recording upstream; keyword arguments go to bootstrap()."""
    started: list[Running] = []
    kind = request.param

    def start(**kw: Any) -> Running:
        echo = EchoServer().start()
        upstream = RecordingUpstream(["a"]).start()
        for attempt in range(3):
            port, admin, dead = _distinct(3)
            args = dict(kw)
            if callable(args.get("clusters")):  # clusters(echo_port, h1_port)
                args["clusters"] = args["clusters"](echo.port, upstream.ports["a"])
            boot = bootstrap(port, admin, echo.port, upstream.ports["a"], dead, **args)
            work = tmp_path / f"{kind}-{len(started)}-{attempt}"
            if kind == "envoy":
                proc = ProxyProcess.envoy(envoy_binary(), boot, work)
            else:
                proc = ProxyProcess.sofamesh(sofamesh_command(), boot, work)
            try:
                proc.start()
            except RuntimeError as e:
                proc.stop()
                if attempt < 2 and "in use" in str(e):
                    continue
                echo.stop()
                upstream.stop()
                raise
            r = Running(kind, port, admin, proc, echo, upstream)
            started.append(r)
            return r
        raise AssertionError("unreachable")

    yield start
    for r in started:
        r.proc.stop()
        r.echo.stop()
        r.upstream.stop()
