"""HCM tracing with envoy.tracers.zipkin (HTTP JSON v2): the same bootstrap and requests
through real Envoy 1.40 and `sofamesh proxy`; the spans the collector receives (count, kind,
name, trace/span/parent ids, shared flag, tags, custom tags, decorator) and the B3 headers
and request-id marks the upstream receives must be the same, ids aside where they are new."""

from __future__ import annotations

import http.client
import json
import re
import time

from tests.integration.http2.conftest import SERVICE, _cluster, proxies  # noqa: F401

ZIPKIN = {
    "provider": {
        "name": "envoy.tracers.zipkin",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            "collector_cluster": "zipkin",
            "collector_endpoint": "/api/v2/spans",
            "collector_endpoint_version": "HTTP_JSON",
        },
    },
    "random_sampling": {"value": 100},
    "custom_tags": [
        {"tag": "lit", "literal": {"value": "v1"}},
        {"tag": "tenant", "request_header": {"name": "x-tenant", "default_value": "none"}},
    ],
}
ROUTES = [
    {"match": {"prefix": "/" + SERVICE + "/"}, "route": {"cluster": "grpc"}},
    {"match": {"prefix": "/dec"}, "route": {"cluster": "h1"}, "decorator": {"operation": "op"}},
    {"match": {"prefix": "/nf"}, "direct_response": {"status": 404}},
    {"match": {"prefix": "/"}, "route": {"cluster": "h1"}},
]
B3 = {"x-b3-traceid": "0000000000000abc", "x-b3-spanid": "0000000000000def"}
REQUESTS = [
    ("/plain", {}),
    ("/cont", {**B3, "x-b3-sampled": "1", "x-tenant": "t1"}),
    ("/unsampled", {**B3, "x-b3-sampled": "0"}),
    ("/dec", {"user-agent": "probe/1"}),
    ("/nf", {}),
    ("/parent", {**B3, "x-b3-parentspanid": "0000000000000111", "x-b3-sampled": "1"}),
]
COLLECTOR = "/api/v2/spans"
KNOWN = {"0000000000000abc", "0000000000000def", "0000000000000111"}


def _norm_id(v: str | None, root: str | None) -> str | None:
    if v is None or v in KNOWN:
        return v
    assert len(v) == 16 and int(v, 16) >= 0, v
    return "=trace" if v == root else "new"


def _run(p, n: int = 6) -> tuple[list, list]:
    for path, headers in REQUESTS:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", path, headers={"host": "svc.local", **headers})
        conn.getresponse().read()
        conn.close()
    with p.channel() as ch:
        ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=10)
    spans: list = []
    deadline = time.monotonic() + 15  # Envoy flushes every 5 s or 5 spans
    while len(spans) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        spans = [
            s for r in p.upstream.snapshot() if r.target == COLLECTOR for s in json.loads(r.body)
        ]
    out = []
    port = f":{p.port}".encode().decode()
    for s in spans:
        # the gRPC client names the proxy's own (different) port in its authority
        tags = {k: v.replace(port, ":PORT") for k, v in s["tags"].items()}
        s["name"] = s["name"].replace(port, ":PORT")
        if "grpc.timeout" in tags:
            # the gRPC client's own grpc-timeout header, the time left of its 10 s deadline
            # when it sent the call ("10S", "9990m", ...): each proxy copies what it got
            assert re.fullmatch(r"\d{1,8}[HMSmun]", tags["grpc.timeout"]), tags
            tags["grpc.timeout"] = "T"
        rid = tags.pop("guid:x-request-id", "-" * 14 + "9")
        assert rid[14] == "9", rid  # sampled: marked in the request id
        if s["kind"] == "CLIENT":  # an upstream span names the host twice
            assert tags["peer.address"] == tags["upstream_address"]
            tags["peer.address"] = tags["upstream_address"] = "UPSTREAM"
        out.append(
            {
                "name": s["name"],
                "kind": s["kind"],
                "shared": s.get("shared"),
                "traceId": _norm_id(s["traceId"], None),
                "id": _norm_id(s["id"], s["traceId"]),
                "parentId": _norm_id(s.get("parentId"), s["traceId"]),
                "tags": tags,
                "ss": [a["value"] for a in s["annotations"]],
                "endpoint": sorted(s["localEndpoint"]),
            }
        )
    up = []
    for r in p.upstream.snapshot():
        if r.target == COLLECTOR:
            continue
        h = {k: v for k, v in r.headers if k.startswith("x-b3")}
        tid = h.get("x-b3-traceid")
        up.append(
            (
                r.target,
                _norm_id(tid, None),
                _norm_id(h.get("x-b3-spanid"), tid),
                _norm_id(h.get("x-b3-parentspanid"), tid),
                h.get("x-b3-sampled"),
                dict(r.headers)["x-request-id"][14],
            )
        )
    key = lambda s: (s["tags"].get("http.url", ""), s["kind"], str(sorted(s["tags"].items())))
    return sorted(out, key=key), sorted(up)


SEEN: dict = {}


def test_zipkin_spans_and_b3_headers_as_envoy(proxies):  # noqa: F811
    p = proxies(
        hcm={"tracing": ZIPKIN},
        routes=ROUTES,
        clusters=lambda grpc_port, h1_port: [_cluster("zipkin", h1_port, False)],
    )
    # the recording upstream serves the h1 cluster and the collector on one port: the
    # collector's POSTs are told apart by their path
    spans, up = _run(p)
    SEEN[p.kind] = (spans, up, p.stats().get("tracing.zipkin.spans_sent"))
    assert len(spans) == 6  # the unsampled request has no span
    by_url = {s["tags"]["http.url"]: s for s in spans}
    assert by_url["http://svc.local/dec"]["name"] == "op"
    assert by_url["http://svc.local/cont"]["traceId"] == "0000000000000abc"
    assert by_url["http://svc.local/cont"]["id"] == "0000000000000def"  # shared context
    assert by_url["http://svc.local/cont"]["tags"]["tenant"] == "t1"
    assert by_url["http://svc.local/nf"]["tags"]["http.status_code"] == "404"
    if len(SEEN) == 2:
        assert SEEN["envoy"][0] == SEEN["sofamesh"][0]
        assert SEEN["envoy"][1] == SEEN["sofamesh"][1]
        assert SEEN["envoy"][2] == SEEN["sofamesh"][2] == 6


SPAWN_SEEN: dict = {}


def test_zipkin_spawn_upstream_span_as_envoy(proxies):  # noqa: F811
    """spawn_upstream_span: each request that goes upstream also gets a CLIENT span
    "router <cluster> egress", a child of the server span, whose id the upstream receives
    (x-b3-parentspanid: the server span)."""
    p = proxies(
        hcm={"tracing": {**ZIPKIN, "spawn_upstream_span": True}},
        routes=ROUTES,
        clusters=lambda grpc_port, h1_port: [_cluster("zipkin", h1_port, False)],
    )
    spans, up = _run(p, 11)
    SPAWN_SEEN[p.kind] = (spans, up)
    clients = [s for s in spans if s["kind"] == "CLIENT"]
    assert len(spans) == 11 and len(clients) == 5  # /nf is answered by the route itself
    assert all(s["parentId"] in ("=trace", "0000000000000def") for s in clients), clients
    assert {s["ss"][0] for s in clients} == {"cr"}
    cont = next(u for u in up if u[0] == "/cont")
    assert cont[1:5] == ("0000000000000abc", "new", "0000000000000def", "1")
    if len(SPAWN_SEEN) == 2:
        for a, b in zip(SPAWN_SEEN["envoy"][0], SPAWN_SEEN["sofamesh"][0], strict=True):
            assert a == b
        assert SPAWN_SEEN["envoy"] == SPAWN_SEEN["sofamesh"]


BOOT_SEEN: dict = {}


def test_bootstrap_tracer_is_the_default_provider(proxies):  # noqa: F811
    """Bootstrap `tracing.http` (what Istio's pilot-agent bootstrap carries): an HCM whose
    tracing names no provider uses it, as in Envoy; the same spans reach the collector."""
    hcm_tracing = {k: v for k, v in ZIPKIN.items() if k != "provider"}
    p = proxies(
        hcm={"tracing": hcm_tracing},
        routes=ROUTES,
        clusters=lambda grpc_port, h1_port: [_cluster("zipkin", h1_port, False)],
        top={"tracing": {"http": ZIPKIN["provider"]}},
    )
    spans, up = _run(p)
    BOOT_SEEN[p.kind] = (spans, up)
    assert len(spans) == 6
    if len(BOOT_SEEN) == 2:
        assert BOOT_SEEN["envoy"] == BOOT_SEEN["sofamesh"]
