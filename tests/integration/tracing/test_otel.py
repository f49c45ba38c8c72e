"""HCM tracing with envoy.tracers.opentelemetry (OTLP over gRPC): the same bootstrap and
requests through real Envoy 1.40 and `sofamesh proxy`, an OTLP receiver in the test (a
grpcio server implementing opentelemetry.proto.collector.trace.v1.TraceService/Export).
The spans it receives (count, kind, name, trace id, parent/child links, tracestate,
status, attributes, resource service.name) and the traceparent / tracestate / x-request-id
the upstream receives must be the same, ids aside where they are new (then: new ids, the
same trace as the span that was reported, the span id of the span that was reported).
Envoy's behaviour is also written out below, so each proxy's run checks it on its own."""

from __future__ import annotations

import base64
import copy
import http.client
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts

from tests.conftest import FIXTURES, envoy_binary, free_port, sofamesh_command
from tests.integration.http2.conftest import SERVICE, _cluster, proxies  # noqa: F401
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.http_upstream import RecordingUpstream

TID = "0af7651916cd43dd8448eb211c80319c"
PID = "b7ad6b7169203331"
TP = f"00-{TID}-{PID}-"
KNOWN = {TID, PID}


class OtlpReceiver:
    """An OTLP/gRPC trace collector: every ExportTraceServiceRequest it is sent."""

    def __init__(self) -> None:
        self.requests: list[ts.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

        def export(req: ts.ExportTraceServiceRequest, ctx: grpc.ServicerContext):
            with self.lock:
                self.requests.append(req)
            return ts.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.trace.v1.TraceService",
                    {
                        "Export": grpc.unary_unary_rpc_method_handler(
                            export,
                            request_deserializer=ts.ExportTraceServiceRequest.FromString,
                            response_serializer=ts.ExportTraceServiceResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def spans(self) -> list[tuple[dict, dict]]:
        """(resource attributes, span as JSON) for every span received."""
        out = []
        with self.lock:
            reqs = list(self.requests)
        for req in reqs:
            d = json_format.MessageToDict(req)
            for rs in d["resourceSpans"]:
                res = {a["key"]: a["value"]["stringValue"] for a in rs["resource"]["attributes"]}
                # the bundled OTLP protos name field 2 by its old name (scope_spans today)
                for ss in rs.get("instrumentationLibrarySpans", []):
                    out.extend((res, s) for s in ss["spans"])
        return out

    def wait(self, n: int, timeout: float = 20.0) -> list[tuple[dict, dict]]:
        deadline = time.monotonic() + timeout  # Envoy flushes every 5 s or 5 spans
        while True:
            got = self.spans()
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    def stop(self) -> None:
        self.server.stop(0)


def _hex(b64: str | None) -> str | None:
    return base64.b64decode(b64).hex() if b64 else None


def otel_provider(cluster: str = "otel", service: str = "front") -> dict:
    return {
        "name": "envoy.tracers.opentelemetry",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "1s"},
            "service_name": service,
        },
    }


CUSTOM_TAGS = [
    {"tag": "lit", "literal": {"value": "v1"}},
    {"tag": "tenant", "request_header": {"name": "x-tenant", "default_value": "none"}},
]
SCENARIOS = {
    # everything sampled by the connection manager
    "sampled": {"random_sampling": {"value": 100}},
    # nothing sampled but what x-client-trace-id forces (client_sampling: 100 %)
    "unsampled": {"random_sampling": {"value": 0}},
    # a CLIENT span for every upstream request, its id sent upstream
    "spawn": {"random_sampling": {"value": 100}, "spawn_upstream_span": True},
    # overall_sampling 0 % vetoes every decision, x-client-trace-id's too
    "overall0": {"random_sampling": {"value": 100}, "overall_sampling": {"value": 0}},
    # client_sampling 0 %: x-client-trace-id forces nothing (random_sampling decides)
    "client0": {"random_sampling": {"value": 0}, "client_sampling": {"value": 0}},
}
ROUTES = [
    {"match": {"prefix": "/" + SERVICE + "/", "grpc": {}}, "route": {"cluster": "grpc"}},
    {"match": {"prefix": "/dec"}, "route": {"cluster": "h1"}, "decorator": {"operation": "op"}},
    {"match": {"prefix": "/nf"}, "direct_response": {"status": 404}},
    {"match": {"prefix": "/dead"}, "route": {"cluster": "h2dead"}},
    {"match": {"prefix": "/"}, "route": {"cluster": "h1"}},
]
REQUESTS = [
    ("/plain", {}),
    ("/sampled", {"traceparent": TP + "01", "tracestate": "k=v", "x-tenant": "t1"}),
    ("/unsampled", {"traceparent": TP + "00"}),
    ("/flags3", {"traceparent": TP + "03"}),
    ("/garbage", {"traceparent": "garbage"}),
    ("/zero-trace", {"traceparent": "00-" + "0" * 32 + "-" + PID + "-01"}),
    ("/upper", {"traceparent": TP.upper() + "01"}),
    ("/longer", {"traceparent": TP + "01-extra"}),
    ("/version-ff", {"traceparent": "ff" + TP[2:] + "01"}),
    ("/client", {"x-client-trace-id": "abc"}),
    ("/force", {"x-envoy-force-trace": "1"}),
    ("/err", {"x-upstream-action": "status=503"}),
    ("/e404", {"x-upstream-action": "status=404"}),
    ("/nf", {}),
    ("/dead", {}),
    ("/dec", {"user-agent": "probe/1"}),
]
# (request, metadata): gRPC over HTTP/2, the last one continuing a trace
GRPC_CALLS = [
    (b"ok", ()),
    (b"fail:INTERNAL:boom", ()),
    (b"fail:NOT_FOUND:nf", ()),
    (b"ok", (("traceparent", TP + "01"), ("tracestate", "g=1"))),
]


def _norm_span(res: dict, s: dict, port: str, ids: dict[str, str]) -> dict:
    attrs = {a["key"]: a["value"]["stringValue"] for a in s.get("attributes", [])}
    rid = attrs.pop("guid:x-request-id", None)
    if rid is not None:
        assert rid[14] in "9b", rid  # the request id carries the trace reason
        attrs["rid-mark"] = rid[14]
    attrs.pop("grpc.timeout", None)  # the gRPC client's own remaining deadline
    for k in ("http.url", "grpc.authority"):
        if k in attrs:
            attrs[k] = attrs[k].replace(port, ":PORT")
    if "upstream_address" in attrs:
        # an upstream span names the host as upstream_address and as peer.address
        assert attrs["peer.address"] == attrs["upstream_address"]
        attrs["upstream_address"] = attrs["peer.address"] = "127.0.0.1:UPSTREAM"
    tid, sid, pid = _hex(s["traceId"]), _hex(s["spanId"]), _hex(s.get("parentSpanId"))
    return {
        "name": s["name"],
        "kind": s["kind"],
        "trace": tid if tid in KNOWN else "new",
        "parent": pid if pid in KNOWN or pid is None else ids.get(pid, "unknown"),
        "tracestate": s.get("traceState"),
        "status": s["status"].get("code", "UNSET") if "status" in s else None,
        "attrs": attrs,
        "service": res.get("service.name"),
        "_tid": tid,
        "_sid": sid,
    }


def _observe(p, recv: OtlpReceiver, expect_spans: int) -> tuple[list, list, dict]:
    for path, headers in REQUESTS:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", path, headers={"host": "svc.local", **headers})
        conn.getresponse().read()
        conn.close()
    with p.channel() as ch:
        for body, md in GRPC_CALLS:
            try:
                ch.unary_unary(f"/{SERVICE}/Unary")(body, timeout=10, metadata=md)
            except grpc.RpcError:
                pass
    got = recv.wait(expect_spans)
    # nothing more should come; expecting none: past a flush interval (5 s), or a wrong
    # span would not have been sent yet
    time.sleep(0.3 if expect_spans else 6.0)
    got = recv.spans()
    port = f":{p.port}"
    # span id -> what it is: the downstream span of a request, or the upstream (router) span
    ids: dict[str, str] = {}
    for _, s in got:
        ids[_hex(s["spanId"])] = (
            "server"
            if s["kind"] != "SPAN_KIND_CLIENT" or not s["name"].startswith("router ")
            else "client"
        )
    spans = [_norm_span(res, s, port, ids) for res, s in got]
    by_sid = {s["_sid"]: s for s in spans}
    up = []
    received = [(r.target, r.header) for r in p.upstream.snapshot()]
    for i, md in enumerate(p.echo.seen_metadata):  # what the gRPC server was sent
        received.append((f"grpc#{i}", lambda k, md=md: [v for n, v in md if n == k]))
    for target, header in received:
        tp = header("traceparent")
        entry = {"target": target, "rid-mark": (header("x-request-id") or ["?"])[0][14]}
        entry["force-trace"] = bool(header("x-envoy-force-trace"))
        entry["tracestate"] = header("tracestate")
        if tp and tp[0].count("-") == 3 and tp[0].split("-")[2] != PID:
            ver, tid, sid, flags = tp[0].split("-")
            span = by_sid.get(sid)
            entry["traceparent"] = (
                ver,
                tid if tid in KNOWN else "new",
                "reported " + ids[sid] if span is not None else "unreported",
                flags,
            )
            if span is not None:
                assert span["_tid"] == tid  # the same trace as the span reported
        else:
            entry["traceparent"] = tp
        up.append(entry)
    for s in spans:
        del s["_tid"], s["_sid"]
    key = lambda s: (s["attrs"].get("http.url", ""), s["kind"], str(sorted(s["attrs"].items())))
    return sorted(spans, key=key), sorted(up, key=lambda e: e["target"]), p.stats()


SEEN: dict = {}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_otel_spans_and_traceparent_as_envoy(proxies, scenario):  # noqa: F811
    recv = OtlpReceiver()
    try:
        tracing = {"provider": otel_provider(), "custom_tags": CUSTOM_TAGS}
        tracing.update(SCENARIOS[scenario])
        p = proxies(
            hcm={"tracing": tracing},
            routes=ROUTES,
            clusters=lambda grpc_port, h1_port: [_cluster("otel", recv.port, True)],
        )
        n = {"sampled": 16, "unsampled": 1, "spawn": 31, "overall0": 0, "client0": 0}[scenario]
        spans, up, stats = _observe(p, recv, n)
    finally:
        recv.stop()
    SEEN.setdefault(scenario, {})[p.kind] = (
        spans,
        up,
        stats.get("tracing.opentelemetry.spans_sent"),
    )
    decisions = {k: v for k, v in stats.items() if k.startswith("http.ingress.tracing.")}
    SEEN[scenario][p.kind] += (decisions,)
    total = len(REQUESTS) + len(GRPC_CALLS)
    client, random_, not_ = {
        "sampled": (1, total - 1, 0),
        "spawn": (1, total - 1, 0),
        "unsampled": (1, 0, total - 1),
        "overall0": (0, 0, total),
        "client0": (0, 0, total),
    }[scenario]
    assert decisions == {
        "http.ingress.tracing.client_enabled": client,
        "http.ingress.tracing.health_check": 0,
        "http.ingress.tracing.not_traceable": not_,
        "http.ingress.tracing.random_sampling": random_,
        "http.ingress.tracing.service_forced": 0,
    }
    assert len(spans) == n, " ".join(sorted(s["attrs"].get("http.url", s["name"]) for s in spans))
    assert stats.get("tracing.opentelemetry.spans_sent") == n
    assert {s["service"] for s in spans} == ({"front"} if n else set())
    upstream = {e["target"]: e for e in up}
    server = {
        s["attrs"]["http.url"]: s for s in spans if "http.url" in s["attrs"]
    }  # downstream spans by URL (gRPC ones share one URL: checked below)
    # x-envoy-force-trace is not honoured (no request is internal without
    # internal_address_config) and is dropped, as an external request's
    assert upstream["/force"]["force-trace"] is False
    # an unreadable traceparent: Envoy's null span, the header passed on, nothing reported
    assert upstream["/garbage"]["traceparent"] == ["garbage"]
    assert upstream["/zero-trace"]["traceparent"] == ["00-" + "0" * 32 + "-" + PID + "-01"]
    assert "http://svc.local/garbage" not in server
    # Envoy reads the traceparent by its length and hex digits: 55 bytes exactly, any case
    # of hex, any version
    assert upstream["/longer"]["traceparent"] == [TP + "01-extra"]
    if scenario in ("overall0", "client0"):
        assert upstream["/client"]["traceparent"][2:] == ("unreported", "00")
        assert upstream["/client"]["rid-mark"] == "4"
        assert upstream["/sampled"]["traceparent"] == ("00", TID, "unreported", "00")
    elif scenario == "unsampled":
        # only x-client-trace-id traces (client_sampling 100 %), its request id marked b
        assert [s["attrs"]["http.url"] for s in spans] == ["http://svc.local/client"]
        assert spans[0]["attrs"]["rid-mark"] == "b"
        assert spans[0]["attrs"]["guid:x-client-trace-id"] == "abc"
        # the caller's sampled flag does not outvote the connection manager's decision
        assert upstream["/sampled"]["traceparent"] == ("00", TID, "unreported", "00")
        assert upstream["/sampled"]["tracestate"] == ["k=v"]
        assert upstream["/plain"]["traceparent"][3] == "00"
        assert upstream["/plain"]["rid-mark"] == "4"  # not traced: an ordinary UUID v4
    else:
        hop = "reported client" if scenario == "spawn" else "reported server"
        assert upstream["/plain"]["traceparent"] == ("00", "new", hop, "01")
        assert upstream["/plain"]["tracestate"] == [""]
        assert upstream["/sampled"]["traceparent"] == ("00", TID, hop, "01")
        assert upstream["/sampled"]["tracestate"] == ["k=v"]
        assert upstream["/unsampled"]["traceparent"] == ("00", TID, "unreported", "00")
        assert upstream["/flags3"]["traceparent"] == ("00", TID, hop, "01")
        assert upstream["/upper"]["traceparent"] == ("00", TID, hop, "01")  # lower-cased
        assert upstream["/version-ff"]["traceparent"] == ("00", TID, hop, "01")
        assert upstream["/client"]["rid-mark"] == "b"
        assert upstream["/plain"]["rid-mark"] == "9"
        cont = server["http://svc.local/sampled"]
        assert (cont["trace"], cont["parent"], cont["tracestate"]) == (TID, PID, "k=v")
        assert cont["kind"] == "SPAN_KIND_SERVER" and cont["name"] == "ingress"
        assert cont["attrs"]["tenant"] == "t1" and cont["attrs"]["lit"] == "v1"
        assert server["http://svc.local/plain"]["parent"] is None
        assert server["http://svc.local/dec"]["name"] == "op"
        assert server["http://svc.local/err"]["status"] == "STATUS_CODE_ERROR"
        assert server["http://svc.local/err"]["attrs"]["error"] == "true"
        assert server["http://svc.local/e404"]["status"] is None  # 4xx: a SERVER span's OK
        assert server["http://svc.local/nf"]["attrs"]["http.status_code"] == "404"
        assert server["http://svc.local/dead"]["attrs"]["response_flags"] == "UF"
        grpc_spans = [
            s for s in spans if s["kind"] == "SPAN_KIND_SERVER" and "grpc.path" in s["attrs"]
        ]
        assert sorted((s["attrs"]["grpc.status_code"], s["status"]) for s in grpc_spans) == [
            ("0", "UNSET"),
            ("0", "UNSET"),
            ("13", "STATUS_CODE_ERROR"),
            ("5", "UNSET"),  # NOT_FOUND is not the server's fault
        ]
        assert all(s["attrs"]["http.protocol"] == "HTTP/2" for s in grpc_spans)
        assert [(s["trace"], s["parent"], s["tracestate"]) for s in grpc_spans].count(
            (TID, PID, "g=1")
        ) == 1
        assert upstream["grpc#3"]["traceparent"] == ("00", TID, hop, "01")
        assert upstream["grpc#3"]["tracestate"] == ["g=1"]
        if scenario == "spawn":
            clients = [s for s in spans if s["kind"] == "SPAN_KIND_CLIENT"]
            assert len(clients) == 15  # every traced request that went upstream
            assert all(s["parent"] == "server" for s in clients)
            dead = next(s for s in clients if s["name"] == "router h2dead egress")
            assert dead["attrs"]["error.reason"] == "remote connection failure"
            assert dead["attrs"]["http.status_code"] == "0"
            e404 = next(s for s in clients if s["attrs"].get("http.status_code") == "404")
            assert e404["status"] == "STATUS_CODE_ERROR"  # 4xx: a CLIENT span's error
    if len(SEEN[scenario]) == 2:
        e, s = SEEN[scenario]["envoy"], SEEN[scenario]["sofamesh"]
        assert e[0] == s[0]
        assert e[1] == s[1]
        assert e[2] == s[2]
        assert e[3] == s[3]


# Envoy's own example (examples/opentelemetry): an INBOUND listener and an OUTBOUND one -----
def _example_boot(name: str, listen: list[int], admin: int, up: int, collector: int) -> dict:
    boot = yaml.safe_load((FIXTURES / "envoy-examples" / name).read_text())
    for lst, port in zip(boot["static_resources"]["listeners"], listen, strict=True):
        lst["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
    for cl in boot["static_resources"]["clusters"]:
        cl["type"] = "STATIC"
        port = collector if cl["name"] == "opentelemetry_collector" else up
        for eps in cl["load_assignment"]["endpoints"]:
            for ep in eps["lb_endpoints"]:
                ep["endpoint"]["address"]["socket_address"].update(
                    address="127.0.0.1", port_value=port
                )
    boot["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
    return boot


EXAMPLE_SEEN: dict = {}


EXAMPLES = [
    "opentelemetry_envoy-1.yaml",
    "opentelemetry_envoy-2.yaml",
    "opentelemetry_envoy-front-proxy.yaml",
]


def _example_routes(boot: dict) -> list[list[tuple[str, str, str]]]:
    """Per listener: (path prefix, decorator, span kind) of each route."""
    out = []
    for lst in boot["static_resources"]["listeners"]:
        kind = (
            "SPAN_KIND_CLIENT"
            if lst.get("traffic_direction") == "OUTBOUND"
            else ("SPAN_KIND_SERVER")
        )
        hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
        out.append(
            [
                (r["match"]["prefix"], r["decorator"]["operation"], kind)
                for vh in hcm["route_config"]["virtual_hosts"]
                for r in vh["routes"]
            ]
        )
    return out


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("kind", ["envoy", "sofamesh"])
def test_opentelemetry_example_traced_like_envoy(name: str, kind: str, tmp_path: Path) -> None:
    """Envoy's examples/opentelemetry configs as they are but for addresses: each route of
    each listener gets a request without context and one continuing a trace. OUTBOUND
    listeners (Envoy's egress) write CLIENT spans, named by the route's decorator."""
    recv = OtlpReceiver()
    upstream = RecordingUpstream(["a"]).start()
    text = (FIXTURES / "envoy-examples" / name).read_text()
    n = len(yaml.safe_load(text)["static_resources"]["listeners"])
    ports: list[int] = []
    while len(ports) < n + 1:
        q = free_port()
        if q not in ports:
            ports.append(q)
    boot = _example_boot(name, ports[:n], ports[n], upstream.ports["a"], recv.port)
    routes = _example_routes(boot)
    expect = []
    proc = (
        ProxyProcess.envoy(envoy_binary(), copy.deepcopy(boot), tmp_path)
        if kind == "envoy"
        else ProxyProcess.sofamesh(sofamesh_command(), copy.deepcopy(boot), tmp_path)
    )
    try:
        proc.start()
        for port, lroutes in zip(ports[:n], routes, strict=True):
            for prefix, op, span_kind in lroutes:
                for headers in ({}, {"traceparent": TP + "01"}):
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    conn.request("GET", prefix, headers={"host": "example.com", **headers})
                    assert conn.getresponse().status == 200
                    conn.close()
                    ctx = (TID, PID) if headers else ("new", None)
                    expect.append((op, span_kind, *ctx))
        got = recv.wait(len(expect))
        _, stats = admin_get(ports[n], "/stats")
    finally:
        proc.stop()
        recv.stop()
        upstream.stop()
    ids = {_hex(s["spanId"]): "server" for _, s in got}
    spans = sorted(
        (_norm_span(res, s, ":PORT", ids) for res, s in got),
        key=lambda s: (s["name"], str(s["trace"]), str(s["parent"])),
    )
    for s in spans:
        del s["_tid"], s["_sid"]
        for p in ports[:n]:
            s["attrs"]["http.url"] = s["attrs"]["http.url"].replace(f":{p}", ":PORT")
    assert sorted(
        ((s["name"], s["kind"], s["trace"], s["parent"]) for s in spans), key=str
    ) == sorted(expect, key=str)
    service = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"
    ][0]["typed_config"]["tracing"]["provider"]["typed_config"]["service_name"]
    assert {s["service"] for s in spans} == {service}
    assert f"tracing.opentelemetry.spans_sent: {len(expect)}" in stats
    EXAMPLE_SEEN.setdefault(name, {})[kind] = spans
    if len(EXAMPLE_SEEN[name]) == 2:
        assert EXAMPLE_SEEN[name]["envoy"] == EXAMPLE_SEEN[name]["sofamesh"]


# OTLP over HTTP (http_service): protobuf POSTed to the collector ------------------------
HTTP_SEEN: dict = {}


def test_otel_http_service_as_envoy(proxies):  # noqa: F811
    tracing = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "http_service": {
                    "http_uri": {
                        "uri": "http://collector.local:4318/v1/traces",
                        "cluster": "otel_http",
                        "timeout": "1s",
                    },
                    "request_headers_to_add": [
                        {"header": {"key": "x-api-key", "value": "k1"}},
                    ],
                },
                "service_name": "front-http",
            },
        },
        "random_sampling": {"value": 100},
    }
    # the recording upstream serves the h1 cluster and the collector on one port: the
    # collector's POSTs are told apart by their path
    p = proxies(
        hcm={"tracing": tracing},
        routes=ROUTES,
        clusters=lambda grpc_port, h1_port: [_cluster("otel_http", h1_port, False)],
    )
    for path, headers in REQUESTS[:6]:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", path, headers={"host": "svc.local", **headers})
        conn.getresponse().read()
        conn.close()
    deadline = time.monotonic() + 20
    posts: list = []
    while time.monotonic() < deadline:
        posts = [r for r in p.upstream.snapshot() if r.target == "/v1/traces"]
        n = sum(
            len(ss.spans)
            for r in posts
            for rs in ts.ExportTraceServiceRequest.FromString(r.body).resource_spans
            for ss in rs.instrumentation_library_spans
        )
        if n >= 3:
            break
        time.sleep(0.2)
    spans = []
    for r in posts:
        assert r.method == "POST"
        req = ts.ExportTraceServiceRequest.FromString(r.body)
        for rs in req.resource_spans:
            res = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.instrumentation_library_spans:
                for s in ss.spans:
                    d = json_format.MessageToDict(s)
                    spans.append(_norm_span(res, d, f":{p.port}", {}))
    for s in spans:
        del s["_tid"], s["_sid"]
    spans.sort(key=lambda s: s["attrs"]["http.url"])
    heads = sorted(
        {
            (k.lower(), v)
            for r in posts
            for k, v in r.headers
            if k.lower() in ("content-type", "host", "x-api-key", ":authority")
        }
    )
    HTTP_SEEN[p.kind] = (spans, heads)
    assert [s["attrs"]["http.url"] for s in spans] == [
        "http://svc.local/flags3",
        "http://svc.local/plain",
        "http://svc.local/sampled",
    ]
    assert {s["service"] for s in spans} == {"front-http"}
    assert ("content-type", "application/x-protobuf") in heads
    assert ("x-api-key", "k1") in heads
    if len(HTTP_SEEN) == 2:
        assert HTTP_SEEN["envoy"] == HTTP_SEEN["sofamesh"]


@pytest.mark.parametrize("proxies", ["sofamesh"], indirect=True)
def test_otel_collector_down_is_counted_and_traffic_flows(proxies):  # noqa: F811
    """No collector listening: every request is still answered; the failed exports are
    counted (tracing.opentelemetry.reports_failed) and nothing is reported sent."""
    dead = free_port()
    tracing = {"provider": otel_provider(), "random_sampling": {"value": 100}}
    p = proxies(
        hcm={"tracing": tracing},
        clusters=lambda grpc_port, h1_port: [_cluster("otel", dead, True)],
    )
    for i in range(12):
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", f"/r{i}", headers={"host": "svc.local"})
        assert conn.getresponse().status == 200
        conn.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats = p.stats()
        if stats.get("tracing.opentelemetry.reports_failed", 0) >= 2:
            break
        time.sleep(0.2)
    assert stats.get("tracing.opentelemetry.reports_failed", 0) >= 2
    assert stats.get("tracing.opentelemetry.spans_sent", 0) == 0
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    conn.request("GET", "/after", headers={"host": "svc.local"})
    assert conn.getresponse().status == 200


RETRY_SEEN: dict = {}


def test_otel_retries_get_an_upstream_span_each_as_envoy(proxies):  # noqa: F811
    """spawn_upstream_span with retries: every attempt has its own CLIENT span (the retried
    503 one in error, a refused connection's with its reset reason) and sends its own span
    id upstream, all children of the one server span."""
    recv = OtlpReceiver()
    retry = {"retry_on": "5xx,connect-failure", "num_retries": 1}
    routes = [
        {"match": {"prefix": "/dead"}, "route": {"cluster": "h2dead", "retry_policy": retry}},
        {"match": {"prefix": "/"}, "route": {"cluster": "h1", "retry_policy": retry}},
    ]
    try:
        p = proxies(
            hcm={"tracing": {"provider": otel_provider(), "spawn_upstream_span": True}},
            routes=routes,
            clusters=lambda grpc_port, h1_port: [_cluster("otel", recv.port, True)],
        )
        for path, headers in [
            ("/flaky", {"x-upstream-action": "fail=1", "x-case-id": "c1"}),
            ("/dead", {}),
        ]:
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            conn.request("GET", path, headers={"host": "svc.local", **headers})
            conn.getresponse().read()
            conn.close()
        got = recv.wait(6)
        time.sleep(0.3)
        got = recv.spans()
    finally:
        recv.stop()
    ids = {
        _hex(s["spanId"]): "server" if s["kind"] == "SPAN_KIND_SERVER" else "client" for _, s in got
    }
    spans = [_norm_span(res, s, f":{p.port}", ids) for res, s in got]
    sids = {s.pop("_sid") for s in spans}
    assert len({s.pop("_tid") for s in spans}) == 2  # one trace per request
    spans.sort(key=lambda s: (s["kind"], str(sorted(s["attrs"].items()))))
    clients = [s for s in spans if s["kind"] == "SPAN_KIND_CLIENT"]
    assert len(spans) == 6 and len(clients) == 4
    assert all(s["parent"] == "server" for s in clients)
    assert sorted(s["attrs"]["http.status_code"] for s in clients) == ["0", "0", "200", "503"]
    assert [
        s["attrs"].get("error.reason") for s in clients if s["attrs"]["http.status_code"] == "0"
    ] == ["remote connection failure"] * 2
    by = {
        (
            s["attrs"]["upstream_cluster"],
            s["attrs"]["http.status_code"],
            s["attrs"].get("retry.count"),
        ): s["attrs"]
        for s in clients
    }
    assert by[("h1", "503", None)]["canceled"] == "true"  # the retried attempt
    assert "canceled" not in by[("h1", "200", "1")]  # the retry, numbered
    assert by[("h2dead", "0", None)]["response_flags"] == "UF"  # each attempt's own flag
    assert by[("h2dead", "0", "1")]["response_flags"] == "UF"
    dead = next(s for s in spans if s["attrs"].get("http.url") == "http://svc.local/dead")
    assert dead["attrs"]["response_flags"] == "URX,UF"  # the stream's: retries exhausted
    flaky = [r.header("traceparent")[0].split("-")[2] for r in p.upstream.snapshot()]
    assert len(flaky) == 2 and len(set(flaky)) == 2 and set(flaky) <= sids
    RETRY_SEEN[p.kind] = spans
    if len(RETRY_SEEN) == 2:
        assert RETRY_SEEN["envoy"] == RETRY_SEEN["sofamesh"]
