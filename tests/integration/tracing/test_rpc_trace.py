"""RPC tracing (sofamesh.filters.rpc.tracing) with real peers: a trace through HTTP -> Bolt
-> Dubbo hops arrives at a Zipkin receiver as one trace, and each hop forwards the caller's
context updated, in the caller's convention.

The chain, each app passing the context on as a SOFA app with SOFATracer does (SOFATracer
takes the B3 span id of an HTTP request as its span id; an RPC it makes is that span's
child, `<id>.1`; docs/RPC_TRACING.md):

  client --HTTP--> sofamesh HCM (Zipkin) --> web relay (Python; anthunder Bolt client)
    --Bolt, rpc_trace_context.* headers--> sofamesh bolt_proxy --> Bolt relay (anthunder
    server; sofa-rpc-node's Dubbo client, dubbo-remoting) --Dubbo, attachment
    dubbo.rpc.sofa.tracer--> sofamesh dubbo_proxy --> Dubbo server (sofa-rpc-node, dubbo-remoting)

and the same with a gRPC hop first: web relay --gRPC, B3 metadata--> sofamesh HCM (HTTP/2)
--> gRPC relay (grpcio) --Bolt--> ...

The relays do not report spans: every span the receiver gets is sofamesh's, so the chain has
no gap only if each hop's SERVER span shares the id the caller's app gave its call and its
CLIENT span's id is the one the next app receives.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.rpc.conftest import (
    BOLT_TYPE,
    DUBBO_TYPE,
    HCM_TYPE,
    SERVICE,
    NodeServer,
    RawUpstream,
    bootstrap,
    cluster,
    free_port,
    listener,
    node_client,
    node_ready,
    stats,
    wait_stat,
)
from tests.integration.rpc.conftest import sofamesh as sofamesh_proc

BRIDGE = "com.alipay.test.BridgeService:1.0"
CTX_IFACE = "com.alipay.test.ContextService:1.0"
RAW_IFACE = "com.raw.Record"
COLLECTOR = "/api/v2/spans"
TRACING_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager.Tracing"
)


def fnv(rpc_id: str) -> str:
    """SOFATracer's Zipkin span id of an rpc id (FNV-1a 64), or a B3 id as it is."""
    if len(rpc_id) == 16 and all(c in "0123456789abcdef" for c in rpc_id):
        return rpc_id
    h = 0xCBF29CE484222325
    for c in rpc_id:
        h = ((h ^ ord(c)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def tracing(pct: float = 100.0) -> dict:
    return {
        "@type": TRACING_TYPE,
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": COLLECTOR,
                "collector_endpoint_version": "HTTP_JSON",
            },
        },
        "random_sampling": {"value": pct},
    }


class Receiver:
    """A Zipkin v2 collector: the JSON spans POSTed to /api/v2/spans."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path == COLLECTOR:
                    with lock:
                        outer.spans += json.loads(body)
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, want: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout  # reports leave every 5 spans or 5 s
        while True:
            got = [s for s in self.spans if s["traceId"] == trace_id]
            if len(got) >= want or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


def dubbo_call(port: int, method: str, props: dict | None = None, args: list | None = None):
    """One call by sofa-rpc-node's Dubbo client (dubbo-remoting): props go as attachments."""
    argv = [
        "node",
        str(node_ready() / "rpc_client.js"),
        "--dubbo",
        "--target",
        f"127.0.0.1:{port}",
        "--calls",
        json.dumps([{"method": method, "args": args or [], "timeout": 5000}]),
    ]
    if props is not None:
        argv += ["--props", json.dumps(props)]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=node_ready(), check=False
    )
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])[0]
    except (IndexError, json.JSONDecodeError):
        raise AssertionError(
            f"dubbo client failed: {out.stdout!r} {out.stderr[-2000:]!r}"
        ) from None


class _Context:
    """anthunder service: answers with the SOFATracer context the call arrived with."""

    def __init__(self, ctx):
        self.ctx = ctx

    def get(self, body: bytes) -> bytes:
        return json.dumps({k: str(v) for k, v in self.ctx.baggage.items()}).encode()


class _Bridge:
    """anthunder service (the Bolt relay): calls props() over Dubbo through the mesh with
    SOFATracer's Dubbo attachment: its client span is the child `<rpc id>.1` of the call's."""

    dubbo_port = 0

    def __init__(self, ctx):
        self.ctx = ctx

    def call(self, body: bytes) -> bytes:
        b = self.ctx.baggage
        rid = str(b["sofaRpcId"])
        attachment = (
            f"tcid={b['sofaTraceId']}&spid={rid}.1&pspid={rid}&sample={b.get('samp', 'true')}&"
        )
        res = dubbo_call(self.dubbo_port, "props", {"dubbo.rpc.sofa.tracer": attachment})
        return json.dumps({"bolt": {k: str(v) for k, v in b.items()}, "dubbo": res}).encode()


def _anthunder_client(monkeypatch_target, port: int):
    from anthunder import SERVICE_MAP, Client
    from anthunder.client import base

    class _NoMesh:  # the client would otherwise look for a mesh agent on 127.0.0.1:12220
        def __init__(self, *a, **k):
            raise RuntimeError("no mesh in tests")

    monkeypatch_target.setattr(base, "MeshClient", _NoMesh)
    for iface in (BRIDGE, CTX_IFACE):
        if iface not in SERVICE_MAP:  # an immutable dict: set once
            SERVICE_MAP[iface] = ("127.0.0.1", port)
    return Client("trace_test")


def _bolt_bridge(tid: str, sid: str, sampled: str | None) -> bytes:
    """A Bolt call to the Bridge as a SOFATracer app makes it while serving a B3 request
    (SOFATracer takes x-b3-spanid as its span id; its RPC is that span's child `.1`)."""
    from anthunder import Client
    from mytracer import SpanContext

    samp = "false" if sampled == "0" else "true"
    ctx = SpanContext(sofaTraceId=tid, sofaRpcId=f"{sid}.1", samp=samp)
    return Client("web_app").invoke_sync(BRIDGE, "call", b"", spanctx=ctx, timeout_ms=20000)


def _grpc_relay():
    """The gRPC app (grpcio): /sofamesh.test.Relay/Call calls the Bridge over Bolt with the
    B3 context of the call's metadata."""
    from concurrent import futures

    import grpc

    def call(req: bytes, ctx) -> bytes:
        md = dict(ctx.invocation_metadata())
        return _bolt_bridge(md["x-b3-traceid"], md["x-b3-spanid"], md.get("x-b3-sampled"))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "sofamesh.test.Relay", {"Call": grpc.unary_unary_rpc_method_handler(call)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _web_relay(grpc_port: int) -> ThreadingHTTPServer:
    """The HTTP app: /order calls the Bridge over Bolt; /grpc calls the gRPC app through the
    mesh as a B3-instrumented client does (a client span, child of the request's: new span
    id, x-b3-parentspanid the request's)."""
    import secrets

    import grpc

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            tid = self.headers.get("x-b3-traceid")
            sid = self.headers.get("x-b3-spanid")
            sampled = self.headers.get("x-b3-sampled")
            if self.path == "/grpc":
                md = [
                    ("x-b3-traceid", tid),
                    ("x-b3-spanid", secrets.token_hex(8)),
                    ("x-b3-parentspanid", sid),
                    ("x-b3-sampled", sampled or "1"),
                ]
                with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                    call = ch.unary_unary("/sofamesh.test.Relay/Call")
                    out = call(b"", metadata=md, timeout=30)
            else:
                out = _bolt_bridge(tid, sid, sampled)
            self.send_response(200)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    from anthunder.listener.aio_listener import AioListener

    mp = pytest.MonkeyPatch()
    receiver = Receiver()
    ant = AioListener(("127.0.0.1", 0), "bolt_app")
    ant.handler.register_interface(BRIDGE, _Bridge)
    ant.handler.register_interface(CTX_IFACE, _Context)
    t = threading.Thread(target=ant.run_forever, daemon=True)
    t.start()
    web = None
    try:
        deadline = time.monotonic() + 10
        while ant._server is None and time.monotonic() < deadline:
            time.sleep(0.02)
        ant_port = ant._server.sockets[0].getsockname()[1]
        with (
            NodeServer(dubbo=True, tag="dubbo") as dubbo_app,
            NodeServer(tag="bolt") as node,
            RawUpstream("silent") as raw,
        ):
            http_port, bolt_port, dubbo_port, quiet_port, grpc_port = (
                free_port() for _ in range(5)
            )
            _Bridge.dubbo_port = dubbo_port
            _anthunder_client(mp, bolt_port)
            grpc_app, grpc_app_port = _grpc_relay()
            web = _web_relay(grpc_port)
            router = {"name": "envoy.filters.dubbo.router"}

            def dubbo(port: int, prefix: str, pct: float) -> dict:
                return listener(
                    prefix,
                    port,
                    [
                        {
                            "name": "envoy.filters.network.dubbo_proxy",
                            "typed_config": {
                                "@type": DUBBO_TYPE,
                                "stat_prefix": prefix,
                                "route_config": [
                                    {
                                        "name": "rc",
                                        "interface": SERVICE,
                                        "routes": [
                                            {"match": {}, "route": {"cluster": "dubbo_app"}}
                                        ],
                                    }
                                ],
                                "dubbo_filters": [
                                    {
                                        "name": "sofamesh.filters.rpc.tracing",
                                        "config": tracing(pct),
                                    },
                                    router,
                                ],
                            },
                        }
                    ],
                )

            bolt = {
                "name": "sofamesh.filters.network.bolt_proxy",
                "typed_config": {
                    "@type": BOLT_TYPE,
                    "stat_prefix": "bolt_in",
                    "route_config": [
                        {
                            "name": "rc",
                            "interface": iface,
                            "routes": [{"match": {}, "route": {"cluster": "bolt_app"}}],
                        }
                        for iface in (BRIDGE, CTX_IFACE)
                    ]
                    + [
                        {
                            "name": "node",
                            "interface": SERVICE,
                            "routes": [{"match": {}, "route": {"cluster": "node_bolt"}}],
                        },
                        {
                            "name": "raw",
                            "interface": RAW_IFACE,
                            "routes": [{"match": {}, "route": {"cluster": "raw"}}],
                        },
                    ],
                    "bolt_filters": [
                        {"name": "sofamesh.filters.rpc.tracing", "config": tracing()},
                        {"name": "sofamesh.filters.bolt.router"},
                    ],
                },
            }
            hcm = {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM_TYPE,
                    "stat_prefix": "web",
                    "tracing": {k: v for k, v in tracing().items() if k != "@type"},
                    "route_config": {
                        "virtual_hosts": [
                            {
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "web"}}],
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
            grpc_hcm = json.loads(json.dumps(hcm))
            grpc_hcm["typed_config"]["stat_prefix"] = "grpc_in"
            vh = grpc_hcm["typed_config"]["route_config"]["virtual_hosts"][0]
            vh["routes"][0]["route"]["cluster"] = "grpc_app"
            grpc_cluster = cluster("grpc_app", [grpc_app_port])
            grpc_cluster["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                    ".HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
            boot = bootstrap(
                [
                    listener("web", http_port, [hcm]),
                    listener("grpc_in", grpc_port, [grpc_hcm]),
                    listener("bolt", bolt_port, [bolt]),
                    dubbo(dubbo_port, "dubbo_in", 100.0),
                    dubbo(quiet_port, "dubbo_quiet", 0.0),
                ],
                [
                    cluster("web", [web.server_address[1]]),
                    grpc_cluster,
                    cluster("bolt_app", [ant_port]),
                    cluster("dubbo_app", [dubbo_app.port]),
                    cluster("node_bolt", [node.port]),
                    cluster("raw", [raw.port]),
                    cluster("zipkin", [receiver.port]),
                ],
            )
            with sofamesh_proc(boot, tmp_path_factory.mktemp("rpc_trace")) as proxy:
                yield {
                    "proxy": proxy,
                    "receiver": receiver,
                    "http": http_port,
                    "bolt": bolt_port,
                    "dubbo": dubbo_port,
                    "quiet": quiet_port,
                    "monkeypatch": mp,
                    "raw": raw,
                }
    finally:
        if web is not None:
            web.shutdown()
            grpc_app.stop(0)
        receiver.httpd.shutdown()
        ant.shutdown()
        ant._loop.call_soon_threadsafe(ant._loop.stop)
        t.join(5)
        mp.undo()


def _by_id(spans: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in spans:
        out.setdefault(s["id"], []).append(s)
    return out


def test_http_bolt_dubbo_is_one_trace_without_gaps(mesh):
    with urllib.request.urlopen(f"http://127.0.0.1:{mesh['http']}/order", timeout=60) as r:
        out = json.loads(r.read())
    # the Bolt app got the web app's call with the mesh's rpc id: <HTTP span id>.1.1
    bolt_ctx = out["bolt"]
    trace_id = bolt_ctx["sofaTraceId"]
    h = bolt_ctx["sofaRpcId"].split(".")[0]
    assert bolt_ctx["sofaRpcId"] == f"{h}.1.1"
    # the Dubbo server got the Bolt app's call (<h>.1.1.1) with the mesh's id
    assert out["dubbo"]["ok"], out
    att = json.loads(out["dubbo"]["result"])
    assert att["dubbo.rpc.sofa.tracer"] == (
        f"tcid={trace_id}&spid={h}.1.1.1.1&pspid={h}.1.1.1&sample=true&"
    )

    spans = mesh["receiver"].trace(trace_id, 5)
    assert len(spans) == 5, spans
    ids = _by_id(spans)
    http = ids[h][0]
    assert http["kind"] == "SERVER" and "parentId" not in http
    assert http["tags"]["upstream_cluster"] == "web"
    chain = [
        (f"{h}.1", "SERVER", h, "bolt", f"{BRIDGE}#call"),
        (f"{h}.1.1", "CLIENT", f"{h}.1", "bolt", f"{BRIDGE}#call"),
        (f"{h}.1.1.1", "SERVER", f"{h}.1.1", "dubbo", f"{SERVICE}#props"),
        (f"{h}.1.1.1.1", "CLIENT", f"{h}.1.1.1", "dubbo", f"{SERVICE}#props"),
    ]
    for rpc_id, kind, parent, proto, name in chain:
        (s,) = ids[fnv(rpc_id)]
        assert s["kind"] == kind, s
        assert s["parentId"] == fnv(parent), (rpc_id, s)
        assert s["name"] == name
        tags = s["tags"]
        assert tags["rpc.protocol"] == proto
        assert tags["upstream_cluster"] == ("bolt_app" if proto == "bolt" else "dubbo_app")
        assert tags["rpc.status_code"] == ("0" if proto == "bolt" else "20")
        assert tags["rpc.id"] == rpc_id
        assert "error" not in tags
        if kind == "SERVER":
            assert s.get("shared") is True  # the id the caller's app gave its call
            assert tags["rpc.trace_context"] == "sofatracer"
            assert tags["peer.address"] == "127.0.0.1"
    # one trace, every parent present: no gap
    assert {s["traceId"] for s in spans} == {trace_id}
    assert all(s.get("parentId") in ids for s in spans if s is not http)
    # a parent starts before and ends after each of its children
    for s in spans:
        if s is http:
            continue
        p = ids[s["parentId"]][0]
        assert p["timestamp"] <= s["timestamp"]


def test_bolt_context_forwarded_updated(mesh):
    from mytracer import SpanContext

    client = _anthunder_client(mesh["monkeypatch"], mesh["bolt"])
    tid = "0a0fe8ec1580000000001000123"  # SOFATracer's form: IP, millis, sequence, pid
    ctx = SpanContext(sofaTraceId=tid, sofaRpcId="0.1.2", samp="true", sofaCallerApp="shop")
    got = json.loads(client.invoke_sync(CTX_IFACE, "get", b"", spanctx=ctx, timeout_ms=5000))
    # the upstream sees the mesh's call: the caller's first child; the rest as sent
    assert got == {
        "sofaTraceId": tid,
        "sofaRpcId": "0.1.2.1",
        "samp": "true",
        "sofaCallerApp": "shop",
    }
    spans = mesh["receiver"].trace("00000" + tid, 2)
    ids = _by_id(spans)
    (server,) = ids[fnv("0.1.2")]
    (cl,) = ids[fnv("0.1.2.1")]
    assert server["parentId"] == fnv("0.1") and server["kind"] == "SERVER"
    assert cl["parentId"] == server["id"] and cl["kind"] == "CLIENT"
    assert server["name"] == f"{CTX_IFACE}#get"


def _dubbo_ctx(mesh, props: dict | None, port: str = "dubbo", method: str = "props") -> dict:
    res = dubbo_call(mesh[port], method, props)
    assert res["ok"], res
    return json.loads(res["result"])


def test_dubbo_contexts_forwarded_updated(mesh):
    """SOFATracer's attachment, B3 attachments (brave's Dubbo instrumentation) and W3C
    traceparent: each continued and forwarded in its own convention."""
    tid = "0a0fe8ec1580000000001000456"
    sofa = f"tcid={tid}&spid=0.2&pspid=0&sample=true&_sys_zone=gz00a&k%3D=v%26&"
    att = _dubbo_ctx(mesh, {"dubbo.rpc.sofa.tracer": sofa})
    # spid/pspid updated, baggage kept byte for byte
    assert att["dubbo.rpc.sofa.tracer"] == (
        f"tcid={tid}&spid=0.2.1&pspid=0.2&sample=true&_sys_zone=gz00a&k%3D=v%26&"
    )
    spans = mesh["receiver"].trace("00000" + tid, 2)
    ids = _by_id(spans)
    assert ids[fnv("0.2")][0]["parentId"] == fnv("0")
    assert ids[fnv("0.2.1")][0]["parentId"] == fnv("0.2")

    # no spid: the root span, as SOFATracer reads it
    att = _dubbo_ctx(mesh, {"dubbo.rpc.sofa.tracer": f"tcid={tid}&sample=true&"})
    assert att["dubbo.rpc.sofa.tracer"] == f"tcid={tid}&sample=true&spid=0.1&pspid=0&"

    b3 = {
        "X-B3-TraceId": "463ac35c9f6413ad48485a3953bb6124",
        "X-B3-SpanId": "a2fb4a1d1a96d312",
        "X-B3-ParentSpanId": "0020000000000001",
        "X-B3-Sampled": "1",
    }
    att = _dubbo_ctx(mesh, b3)
    assert att["X-B3-TraceId"] == b3["X-B3-TraceId"]
    assert att["X-B3-ParentSpanId"] == "a2fb4a1d1a96d312"  # the shared server span
    new = att["X-B3-SpanId"]
    assert len(new) == 16 and new != "a2fb4a1d1a96d312" and att["X-B3-Sampled"] == "1"
    spans = mesh["receiver"].trace(b3["X-B3-TraceId"], 2)
    ids = _by_id(spans)
    assert ids["a2fb4a1d1a96d312"][0]["parentId"] == "0020000000000001"
    assert ids[new][0]["parentId"] == "a2fb4a1d1a96d312"

    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    att = _dubbo_ctx(mesh, {"traceparent": tp, "tracestate": "congo=t61rcWkgMzE"})
    ver, trace, span, flags = att["traceparent"].split("-")
    assert (ver, trace, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span != "00f067aa0ba902b7" and att["tracestate"] == "congo=t61rcWkgMzE"
    spans = mesh["receiver"].trace(trace, 2)
    ids = _by_id(spans)
    server = ids[ids[span][0]["parentId"]][0]
    assert server["parentId"] == "00f067aa0ba902b7" and server["kind"] == "SERVER"


def test_no_context_starts_a_trace_when_sampled(mesh):
    before = stats(mesh["proxy"]).get("dubbo.dubbo_in.tracing.trace_started", 0)
    att = _dubbo_ctx(mesh, None)
    fields = dict(p.split("=", 1) for p in att["dubbo.rpc.sofa.tracer"].split("&") if p)
    assert fields["spid"] == "0.1" and fields["pspid"] == "0" and fields["sample"] == "true"
    tid = fields["tcid"]
    assert len(tid) == 16 and int(tid, 16) >= 0
    assert wait_stat(mesh["proxy"], "dubbo.dubbo_in.tracing.trace_started", before + 1) > before
    spans = mesh["receiver"].trace(tid, 2)
    ids = _by_id(spans)
    root = ids[fnv("0")][0]
    assert "parentId" not in root and root["tags"]["rpc.trace_context"] == "new"
    assert ids[fnv("0.1")][0]["parentId"] == root["id"]
    # not sampled (random_sampling 0): the call goes as it came, no context added
    att = _dubbo_ctx(mesh, None, port="quiet")
    assert "dubbo.rpc.sofa.tracer" not in att
    # a caller's unsampled context is still forwarded updated, and nothing is reported
    att = _dubbo_ctx(mesh, {"dubbo.rpc.sofa.tracer": "tcid=abc123&spid=0.3&sample=false&"})
    assert att["dubbo.rpc.sofa.tracer"] == "tcid=abc123&spid=0.3.1&sample=false&pspid=0.3&"


def test_error_and_malformed_context(mesh):
    # a call that throws: both spans say error
    tid = "0a0fe8ec1580000000001000789"
    res = dubbo_call(
        mesh["dubbo"], "fail", {"dubbo.rpc.sofa.tracer": f"tcid={tid}&spid=0.4&"}, ["boom"]
    )
    assert not res["ok"] and "boom" in res["error"]
    spans = mesh["receiver"].trace("00000" + tid, 2)
    assert len(spans) == 2 and all(s["tags"]["error"] == "true" for s in spans)
    # malformed contexts: counted, ignored (a new trace), the calls served
    proxy = mesh["proxy"]
    before = stats(proxy).get("dubbo.dubbo_in.tracing.context_malformed", 0)
    for bad in (
        {"dubbo.rpc.sofa.tracer": "tcid=not hex!&spid=0.1&"},
        {"dubbo.rpc.sofa.tracer": "tcid=abc&spid=0..1&"},
        {"X-B3-TraceId": "xyz", "X-B3-SpanId": "a2fb4a1d1a96d312"},
        {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
    ):
        att = _dubbo_ctx(mesh, bad)
        assert att["dubbo.rpc.sofa.tracer"].endswith("&spid=0.1&pspid=0&sample=true&"), att
    assert wait_stat(proxy, "dubbo.dubbo_in.tracing.context_malformed", before + 4) == before + 4

    from mytracer import SpanContext

    client = _anthunder_client(mesh["monkeypatch"], mesh["bolt"])
    before = stats(proxy).get("bolt.bolt_in.tracing.context_malformed", 0)
    ctx = SpanContext(sofaTraceId="0a0fe8ec", sofaRpcId="1", samp="true")
    ctx._baggage = {**ctx.baggage, "sofaTraceId": "trace id with spaces"}
    got = json.loads(client.invoke_sync(CTX_IFACE, "get", b"", spanctx=ctx, timeout_ms=5000))
    assert got["sofaRpcId"] == "0.1"  # a new trace's
    assert wait_stat(proxy, "bolt.bolt_in.tracing.context_malformed", before + 1) == before + 1


@pytest.mark.parametrize("mode", ["bolt", "bolt2"])
def test_bolt_without_context_starts_a_trace(mesh, mode):
    """sofa-rpc-node's Bolt client sends no trace context: a sampled call gets a new trace
    injected into its header map (Bolt v2: the CRC recomputed), and sofa-rpc-node's server
    still answers it."""
    proxy = mesh["proxy"]
    before = stats(proxy).get("bolt.bolt_in.tracing.trace_started", 0)
    res = node_client(mesh["bolt"], [{"method": "plus", "args": [1, 2]}], mode=mode)
    assert res == [{"ok": True, "result": 3}]
    assert wait_stat(proxy, "bolt.bolt_in.tracing.trace_started", before + 1) == before + 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        new = [
            s
            for s in mesh["receiver"].spans
            if s["name"] == f"{SERVICE}:1.0#plus" and s["tags"].get("rpc.trace_context") == "new"
        ]
        if len(new) > (0 if mode == "bolt" else 1):
            break
        time.sleep(0.1)
    root = new[-1]
    assert "parentId" not in root and root["id"] == fnv("0")
    assert root["tags"]["upstream_cluster"] == "node_bolt"
    assert root["tags"]["rpc.status_code"] == "0"


def test_proxy_replies_are_traced_with_their_flag(mesh):
    """A call the proxy answers itself (no route) gives a SERVER span only, with Envoy's
    response flag and the error tag (a raw Dubbo request: no peer sends to a missing
    interface on purpose)."""
    import socket

    from sofamesh._core.codecs import dubbo

    tid = "0a0fe8ec1580000000001000999"
    req = dubbo.encode_request(
        5,
        "2.0.2",
        "com.none.Missing",
        None,
        "get",
        "",
        b"",
        {"path": "com.none.Missing", "dubbo.rpc.sofa.tracer": f"tcid={tid}&spid=0.7&"},
    )
    with socket.create_connection(("127.0.0.1", mesh["dubbo"]), timeout=10) as s:
        s.sendall(req)
        frames: list = []
        dec = dubbo.DubboDecoder()
        while not frames:
            frames = dec.feed(s.recv(65536))
    assert frames[0].status == dubbo.DUBBO_SERVICE_NOT_FOUND
    (span,) = mesh["receiver"].trace("00000" + tid, 1)
    assert span["id"] == fnv("0.7") and span["kind"] == "SERVER"
    assert span["tags"]["response_flags"] == "NR" and span["tags"]["error"] == "true"
    assert span["name"] == "com.none.Missing#get"
    assert "upstream_cluster" not in span["tags"]


@pytest.mark.parametrize(
    "change, where",
    [
        ({"spawn_upstream_span": True}, "config.spawn_upstream_span"),
        ({"custom_tags": [{"tag": "a", "literal": {"value": "b"}}]}, "config.custom_tags"),
        ({"client_sampling": {"value": 50}}, "config.client_sampling"),
        ({"provider": {"name": "envoy.tracers.nope"}}, "config.provider"),
        (
            {
                "provider": {
                    "name": "envoy.tracers.datadog",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.trace.v3.DatadogConfig",
                        "collector_cluster": "zipkin",
                        "service_name": "mesh",
                    },
                }
            },
            "config.provider: envoy.tracers.datadog is not implemented for RPC",
        ),
        (None, "dubbo_filters[1]: one sofamesh.filters.rpc.tracing"),
    ],
)
async def test_bad_tracing_configs_fail_at_start_naming_the_field(change, where):
    from sofamesh.config import load_bootstrap
    from sofamesh.config.errors import ConfigError
    from sofamesh.proxy.errors import UnsupportedConfig
    from sofamesh.proxy.server import Server

    cfg = tracing()
    entries = [{"name": "sofamesh.filters.rpc.tracing", "config": cfg}]
    if change is None:
        entries.append(entries[0])
    else:
        cfg.update(change)
    flt = {
        "name": "envoy.filters.network.dubbo_proxy",
        "typed_config": {
            "@type": DUBBO_TYPE,
            "stat_prefix": "d",
            "route_config": [
                {"interface": "a.B", "routes": [{"match": {}, "route": {"cluster": "zipkin"}}]}
            ],
            "dubbo_filters": [*entries, {"name": "envoy.filters.dubbo.router"}],
        },
    }
    boot = bootstrap([listener("l", 0, [flt])], [cluster("zipkin", [1])])
    srv = None
    # refused when the bootstrap is read (an unknown provider) or the listener built
    with pytest.raises(
        (ConfigError, UnsupportedConfig), match=where.replace("[", r"\[").replace("]", r"\]")
    ):
        srv = Server(load_bootstrap(config_yaml=json.dumps(boot)))
        await srv.start()
    if srv is not None:
        await srv.stop()


def test_http_grpc_bolt_dubbo_is_one_trace_without_gaps(mesh):
    """The same chain with a gRPC hop first: the web app calls a gRPC app (grpcio) through
    the mesh's HCM (HTTP/2, B3 in the metadata), which calls the Bridge over Bolt."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mesh['http']}/grpc", timeout=60) as r:
        out = json.loads(r.read())
    trace_id = out["bolt"]["sofaTraceId"]
    g = out["bolt"]["sofaRpcId"].split(".")[0]  # the web app's gRPC client span
    assert out["bolt"]["sofaRpcId"] == f"{g}.1.1"
    assert json.loads(out["dubbo"]["result"])["dubbo.rpc.sofa.tracer"].startswith(
        f"tcid={trace_id}&spid={g}.1.1.1.1&pspid={g}.1.1.1&"
    )
    spans = mesh["receiver"].trace(trace_id, 6)
    assert len(spans) == 6, spans
    ids = _by_id(spans)
    (grpc_span,) = ids[g]
    http = ids[grpc_span["parentId"]][0]
    assert "parentId" not in http and http["tags"]["upstream_cluster"] == "web"
    assert grpc_span["kind"] == "SERVER" and grpc_span["shared"] is True
    assert grpc_span["tags"]["grpc.path"] == "/sofamesh.test.Relay/Call"
    assert grpc_span["tags"]["upstream_cluster"] == "grpc_app"
    for rpc_id, parent in (
        (f"{g}.1", g),
        (f"{g}.1.1", f"{g}.1"),
        (f"{g}.1.1.1", f"{g}.1.1"),
        (f"{g}.1.1.1.1", f"{g}.1.1.1"),
    ):
        (s,) = ids[fnv(rpc_id)]
        assert s["parentId"] == fnv(parent)
    assert {s["traceId"] for s in spans} == {trace_id}
    assert all(s.get("parentId") in ids for s in spans if s is not http)


@pytest.mark.parametrize("v2", [False, True])
def test_bolt_new_rpc_trace_context_forwarded_updated(mesh, v2):
    """SOFARPC 5.1+ sends SOFATracer's serialized context as one header,
    new_rpc_trace_context: forwarded with spid/pspid updated, the rest byte for byte (Bolt
    v2 with CRC: recomputed). No peer here sends this form: the frame is sofamesh's
    codec's, and a recording upstream shows what arrives."""
    import socket

    from sofamesh._core.codecs import bolt

    raw = mesh["raw"]
    tid = "0a0fe8ec158000000000100055" + ("2" if v2 else "1")
    ctx = f"tcid={tid}&spid=0.3&pspid=0&sample=true&_sys_zone=gz00a&biz=x%26y&"
    f = bolt.BoltFrame(
        proto=2 if v2 else 1,
        ver1=2 if v2 else 1,
        switch=1 if v2 else 0,
        request_id=9,
        timeout=300,
        class_name=bolt.SOFA_REQUEST_CLASS,
        headers={
            "service": RAW_IFACE + ":1.0",
            "sofa_head_method_name": "m",
            "new_rpc_trace_context": ctx,
        },
        content=b"payload",
    )
    before = len(raw.received)
    with socket.create_connection(("127.0.0.1", mesh["bolt"]), timeout=10) as s:
        s.sendall(f.encode())
        deadline = time.monotonic() + 10
        got: list = []
        while not got and time.monotonic() < deadline:
            got = bolt.BoltDecoder().feed(bytes(raw.received[before:]))
            time.sleep(0.05)
        s.recv(65536)  # the proxy's timeout reply (the recorder never answers)
    (fwd,) = got
    # a frame (not a ProtocolError: the v2 CRC checks out)
    assert isinstance(fwd, bolt.BoltFrame) and fwd.proto == (2 if v2 else 1), fwd
    assert bool(fwd.has_crc) == v2
    assert bytes(fwd.content) == b"payload" and fwd.header("service") == RAW_IFACE + ":1.0"
    assert fwd.header("new_rpc_trace_context") == (
        f"tcid={tid}&spid=0.3.1&pspid=0.3&sample=true&_sys_zone=gz00a&biz=x%26y&"
    )
    spans = mesh["receiver"].trace("00000" + tid, 2)
    ids = _by_id(spans)
    assert ids[fnv("0.3")][0]["parentId"] == fnv("0")
    client = ids[fnv("0.3.1")][0]
    assert client["tags"]["response_flags"] == "UT" and client["tags"]["error"] == "true"
