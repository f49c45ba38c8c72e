"""HCM tracing with envoy.tracers.datadog: the same bootstrap and requests through real
Envoy 1.40 (dd-trace-cpp v2.1.1 inside) and `sofamesh proxy`, a Datadog-agent-like receiver
(msgpack /v0.4/traces, answering rate_by_service JSON) behind both. The spans the agent
receives (count, service, name, resource, type, trace/parent structure, meta tags, trace
tags, sampling priority, agent rate, error flag) and the x-datadog-* / traceparent /
tracestate headers the upstream receives must be the same, ids aside where they are new."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
import time
from typing import Any

import msgpack
import pytest

from tests.integration.http2.conftest import _cluster, proxies  # noqa: F401

ROUTES = [
    {"match": {"prefix": "/dec"}, "route": {"cluster": "h1"}, "decorator": {"operation": "op"}},
    {"match": {"prefix": "/nf"}, "direct_response": {"status": 404}},
    {"match": {"prefix": "/"}, "route": {"cluster": "h1"}},
]
DEFAULT_RATES = {"rate_by_service": {"service:,env:": 1.0}}
# what differs by implementation, not behaviour: the tracer's identity and process
OWN_META = ("version", "language", "runtime-id")


def _tracing(hostname: str | None = None, **extra: Any) -> dict:
    dd = {
        "@type": "type.googleapis.com/envoy.config.trace.v3.DatadogConfig",
        "collector_cluster": "datadog_agent",
        "service_name": "edge",
    }
    if hostname is not None:
        dd["collector_hostname"] = hostname
    return {"provider": {"name": "envoy.tracers.datadog", "typed_config": dd}, **extra}


class Agent:
    """A Datadog agent's trace intake: POST /v0.4/traces (msgpack: an array of traces, each
    an array of span maps) recorded with its headers, answered 200 with `answer` (JSON)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, dict[str, str], Any]] = []
        self.answer: dict | None = DEFAULT_RATES  # None: not JSON
        self.status = 200
        self.lock = threading.Lock()
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                if "chunked" in (self.headers.get("transfer-encoding") or ""):
                    body = b""
                    while True:
                        n = int(self.rfile.readline().split(b";")[0], 16)
                        body += self.rfile.read(n)
                        self.rfile.readline()
                        if n == 0:
                            break
                else:
                    body = self.rfile.read(int(self.headers.get("content-length") or 0))
                traces = msgpack.unpackb(body, raw=False) if self.path == "/v0.4/traces" else None
                headers = {k.lower(): v for k, v in self.headers.items()}
                with agent.lock:
                    agent.reports.append((self.path, headers, traces))
                out = b"<html>oops" if agent.answer is None else json.dumps(agent.answer).encode()
                self.send_response(agent.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[dict]:
        with self.lock:
            return [s for _, _, tr in self.reports if tr for t in tr for s in t]

    def wait(self, n: int, timeout: float = 20.0) -> list[dict]:
        """The spans once n arrived (dd-trace-cpp flushes every 2 s), n or fewer."""
        deadline = time.monotonic() + timeout
        while len(self.spans()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # nothing more should come
        return self.spans()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def agent():
    a = Agent()
    yield a
    a.stop()


def _start(proxies, agent, **tracing: Any):  # noqa: F811
    return proxies(
        hcm={"tracing": _tracing(**tracing)},
        routes=ROUTES,
        clusters=lambda grpc_port, h1_port: [_cluster("datadog_agent", agent.port, False)],
    )


def _get(p, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    conn.request("GET", path, headers={"host": "svc.local", **(headers or {})})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


class Ids:
    """Names the ids a proxy made ("new1", "new2", ... in order of appearance) so two runs
    compare; ids the test sent stay as they are."""

    def __init__(self, known: set[int]) -> None:
        self.known = known
        self.names: dict[int, str] = {}

    def __call__(self, v: int) -> Any:
        if v in self.known or v == 0:
            return v
        return self.names.setdefault(v, f"new{len(self.names) + 1}")


TID = re.compile(r"^([0-9a-f]{8})00000000$")


def _tid(v: str, t0: float) -> str:
    """A new trace's _dd.p.tid: the time in seconds, then 32 zero bits."""
    m = TID.match(v)
    if m and abs(int(m.group(1), 16) - t0) < 120:
        return "TIME"
    return v


def _norm(spans: list[dict], up: list, known: set[int], t0: float) -> tuple[list, list]:
    """The spans by http.url and the upstream's trace headers, new ids named by what they
    are (the span's own id, its trace's)."""
    out = []
    links = {}
    tids = {s["trace_id"]: s["meta"]["_dd.p.tid"] for s in spans if "_dd.p.tid" in s["meta"]}
    key = lambda s: (s["meta"].get("http.url", ""), s["resource"], s["meta"].get("canceled", ""))
    for s in sorted(spans, key=key):
        assert s["start"] // 10**9 >= int(t0) - 1 and s["duration"] > 0, s
        ids = Ids(known)
        meta = dict(s["meta"])
        for k in OWN_META:
            assert meta.pop(k), (k, meta)
        if "upstream_address" in meta:  # an upstream span names the host (its own port)
            assert meta["peer.address"] == meta["upstream_address"]
            meta["peer.address"] = meta["upstream_address"] = "UPSTREAM"
        rid = meta.pop("guid:x-request-id", "")  # the request's span only
        assert len(rid) in (0, 36)
        if "_dd.p.tid" in meta:
            meta["_dd.p.tid"] = _tid(meta["_dd.p.tid"], t0)
        metrics = dict(s["metrics"])
        assert metrics.pop("process_id") > 0
        span = {
            "service": s["service"],
            "name": s["name"],
            "resource": s["resource"],
            "type": s["type"],
            "error": s["error"],
            "trace_id": ids(s["trace_id"]),
            "span_id": ids(s["span_id"]),
            "parent_id": ids(s["parent_id"]),
            "meta": meta,
            "metrics": metrics,
            "rid_mark": rid[14:15],
        }
        links[s["span_id"]] = (ids, s)
        out.append(span)
    heads = []
    for path, h in up:
        pid = int(h.get("x-datadog-parent-id", "0"))
        assert pid in links, (path, h)  # the upstream's parent is the proxy's span
        ids, s = links[pid]
        assert int(h["x-datadog-trace-id"]) == s["trace_id"]
        tp = h.get("traceparent", "")
        hi = tids.get(s["trace_id"], "0" * 16)
        hexes = {f"{hi}{s['trace_id']:016x}": "TRACE", f"{s['span_id']:016x}": "SPAN"}
        state = h.get("tracestate", "")
        for k, v in hexes.items():
            tp, state = tp.replace(k, v), state.replace(k, v)
        tags = h.get("x-datadog-tags")
        if tags:
            tags = re.sub(
                r"_dd\.p\.tid=([0-9a-f]{16})", lambda m: "_dd.p.tid=" + _tid(m[1], t0), tags
            )
        heads.append(
            (
                path,
                ids(int(h["x-datadog-trace-id"])),
                "SPAN",
                h.get("x-datadog-sampling-priority"),
                h.get("x-datadog-origin"),
                tags,
                tp,
                state,
            )
        )
    return out, sorted(heads)


def _upstream(p) -> list:
    out = []
    for r in p.upstream.snapshot():
        h = {k.lower(): v for k, v in r.headers}
        out.append(
            (r.target, {k: v for k, v in h.items() if "datadog" in k or k.startswith("trace")})
        )
    return out


REQUESTS = [
    ("/new", {"x-tenant": "t1"}),
    (
        "/dd",
        {
            "x-datadog-trace-id": "1234",
            "x-datadog-parent-id": "5678",
            "x-datadog-sampling-priority": "1",
            "x-datadog-origin": "synthetics",
            "x-datadog-tags": "_dd.p.usr.id=abc==,other=x",
        },
    ),
    ("/dd-noprio", {"x-datadog-trace-id": "777", "x-datadog-parent-id": "888"}),
    (
        "/w3c",
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "foo=bar,dd=s:2;o:rum;t.usr.id:x~;zz:1,baz=q",
        },
    ),
    (
        "/reject",
        {
            "x-datadog-trace-id": "4321",
            "x-datadog-parent-id": "8765",
            "x-datadog-sampling-priority": "0",
        },
    ),
    ("/fail", {"x-upstream-action": "status=500"}),
    ("/dec", {"user-agent": "probe/1"}),
    ("/nf", {}),
    (
        "/mixed",
        {
            "x-datadog-trace-id": "1234",
            "x-datadog-parent-id": "5678",
            "x-datadog-sampling-priority": "1",
            "traceparent": "00-000000000000000000000000000004d2-00000000000004d3-01",
            "tracestate": "dd=s:2;p:00000000000004d4,zz=1",
        },
    ),
    ("/bad-id", {"x-datadog-trace-id": "12x4", "x-datadog-parent-id": "5"}),
    ("/no-parent", {"x-datadog-trace-id": "1234"}),
    ("/origin-root", {"x-datadog-trace-id": "55", "x-datadog-origin": "synthetics"}),
    ("/bad-tp", {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"}),
]
KNOWN = {1234, 5678, 777, 888, 4321, 8765, 55, 0xB7AD6B7169203331, 0x8448EB211C80319C, 0x4D3}
SEEN: dict = {}


def test_datadog_spans_and_headers_as_envoy(proxies, agent):  # noqa: F811
    tags = [
        {"tag": "team", "literal": {"value": "mesh"}},
        {"tag": "tenant", "request_header": {"name": "x-tenant", "default_value": "none"}},
    ]
    p = _start(proxies, agent, random_sampling={"value": 100}, custom_tags=tags)
    t0 = time.time()
    for path, headers in REQUESTS:
        _get(p, path, headers)
    spans = agent.wait(len(REQUESTS))
    assert len(spans) == len(REQUESTS)  # one span a request, the rejected one too
    norm, heads = _norm(spans, _upstream(p), KNOWN, t0)
    SEEN[p.kind] = (norm, heads)
    by = {s["meta"]["http.url"].rsplit("/", 1)[1]: s for s in norm}
    assert by["new"]["metrics"] == {"_sampling_priority_v1": 1.0, "_dd.agent_psr": 1.0}
    assert by["new"]["meta"]["_dd.p.dm"] == "-0" and by["new"]["meta"]["_dd.p.tid"] == "TIME"
    assert by["dd"]["trace_id"] == 1234 and by["dd"]["parent_id"] == 5678
    assert by["dd"]["meta"]["_dd.origin"] == "synthetics"
    assert by["dd"]["meta"]["_dd.p.usr.id"] == "abc=="
    assert by["dec"]["meta"]["team"] == "mesh" and by["dec"]["meta"]["tenant"] == "none"
    assert by["new"]["meta"]["tenant"] == "t1"
    assert by["reject"]["metrics"]["_sampling_priority_v1"] == 0.0
    assert by["fail"]["error"] == 1 and "error" not in by["fail"]["meta"]
    assert by["dec"]["resource"] == "op" and by["new"]["resource"] == "ingress"
    assert by["w3c"]["metrics"]["_sampling_priority_v1"] == 2.0
    assert by["mixed"]["parent_id"] == 0x4D3 and by["mixed"]["meta"]["_dd.parent_id"] == (
        "00000000000004d4"
    )
    assert by["bad-id"]["parent_id"] == 0 and by["bad-id"]["trace_id"] != 1234
    assert {s["service"] for s in norm} == {"edge"} and {s["name"] for s in norm} == {"envoy.proxy"}
    # the reports: msgpack to /v0.4/traces, counted in x-datadog-trace-count
    for path, h, traces in agent.reports:
        assert path == "/v0.4/traces" and h["content-type"] == "application/msgpack"
        assert h["host"] == "datadog_agent" and int(h["x-datadog-trace-count"]) == len(traces)
        assert h["datadog-meta-lang"] and h["datadog-meta-tracer-version"]
    st = p.stats()
    assert st["tracing.datadog.reports_sent"] == len(agent.reports)
    assert st["tracing.datadog.reports_failed"] == st["tracing.datadog.reports_dropped"] == 0
    w3c = next(x for x in heads if x[0] == "/w3c")
    assert w3c[5:] == (
        "_dd.p.usr.id=x=,_dd.p.tid=0af7651916cd43dd",
        "00-TRACE-SPAN-01",
        "dd=s:2;p:SPAN;o:rum;t.usr.id:x~;zz:1,foo=bar,baz=q",
    )
    if len(SEEN) == 2:
        for a, b in zip(SEEN["envoy"][0], SEEN["sofamesh"][0], strict=True):
            assert a == b
        assert SEEN["envoy"][1] == SEEN["sofamesh"][1]


SAMPLING_SEEN: dict = {}


def test_datadog_sampling_as_envoy(proxies, agent):  # noqa: F811
    """random_sampling 0: a new trace is reported as a user drop (-1, no decision maker);
    x-client-trace-id under client_sampling 100 samples it (the tracer's sampler: 1); a
    caller's priority is kept. Once the agent answered a rate of 0 for the service, the
    sampler drops (0) with _dd.p.ksr=0 and _dd.agent_psr 0."""
    p = _start(
        proxies,
        agent,
        hostname="agent.example",  # the reports' Host (else the cluster's name)
        random_sampling={"value": 0},
        client_sampling={"value": 100},
    )
    agent.answer = {"rate_by_service": {"service:edge,env:": 0.0, "service:,env:": 1.0}}
    t0 = time.time()
    first = [
        ("/r0", {}),
        ("/client", {"x-client-trace-id": "c1"}),
        (
            "/keep",
            {
                "x-datadog-trace-id": "11",
                "x-datadog-parent-id": "12",
                "x-datadog-sampling-priority": "2",
            },
        ),
        (
            "/noprio",
            {
                "x-datadog-trace-id": "13",
                "x-datadog-parent-id": "14",
                "x-datadog-tags": "_dd.p.dm=-4",
            },
        ),
    ]
    for path, headers in first:
        _get(p, path, headers)
    agent.wait(len(first))
    _get(p, "/after", {"x-client-trace-id": "c2"})  # the agent's rates are known now
    spans = agent.wait(len(first) + 1)
    assert len(spans) == len(first) + 1
    norm, heads = _norm(spans, _upstream(p), {11, 12, 13, 14}, t0)
    SAMPLING_SEEN[p.kind] = (norm, heads)
    by = {s["meta"]["http.url"].rsplit("/", 1)[1]: s for s in norm}
    assert by["r0"]["metrics"] == {"_sampling_priority_v1": -1.0}
    assert "_dd.p.dm" not in by["r0"]["meta"] and by["r0"]["rid_mark"] != "9"
    assert by["client"]["metrics"]["_sampling_priority_v1"] == 1.0
    assert by["client"]["rid_mark"] == "b"
    assert by["keep"]["metrics"] == {"_sampling_priority_v1": 2.0}
    assert by["noprio"]["metrics"] == {"_sampling_priority_v1": -1.0}
    assert by["after"]["metrics"] == {"_sampling_priority_v1": 0.0, "_dd.agent_psr": 0.0}
    assert by["after"]["meta"]["_dd.p.ksr"] == "0"
    assert {h["host"] for _, h, _ in agent.reports} == {"agent.example"}
    after = next(x for x in heads if x[0] == "/after")
    assert after[3] == "0" and after[6].endswith("-00")
    if len(SAMPLING_SEEN) == 2:
        assert SAMPLING_SEEN["envoy"] == SAMPLING_SEEN["sofamesh"]


def test_datadog_refuses_remote_config(tmp_path):
    """Envoy 1.40 polls the agent's /v0.7/config when remote_config is set; sofamesh does
    not implement it and says so by name."""
    import subprocess

    from tests.conftest import sofamesh_command
    from tests.integration.http2.conftest import bootstrap

    boot = bootstrap(1, 2, 3, 4, 5, hcm={"tracing": _tracing()}, routes=ROUTES)
    cfg = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    cfg["typed_config"]["tracing"]["provider"]["typed_config"]["remote_config"] = {}
    boot["static_resources"]["clusters"].append(_cluster("datadog_agent", 6, False))
    f = tmp_path / "b.json"
    f.write_text(json.dumps(boot))
    r = subprocess.run(
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0
    assert "typed_config.remote_config" in r.stdout + r.stderr, r.stdout + r.stderr


EXAMPLE_REQUESTS = [
    ("/plain", {}),
    ("/cont", {"x-datadog-trace-id": "1234", "x-datadog-parent-id": "5678"}),
    ("/w3c", {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
    ("/err", {"x-upstream-action": "status=503"}),
    ("/healthcheck", {}),
]


def _serve_example(kind: str, tmp_path, agent: Agent) -> tuple:
    """fixtures/envoy-examples/datadog-tracing_envoy.yaml on loopback ports (its listener,
    the `http` service and the `dd-agent` collector), EXAMPLE_REQUESTS through it."""
    import yaml

    from tests.conftest import FIXTURES, envoy_binary, free_port, sofamesh_command
    from tests.support.envoy import ProxyProcess
    from tests.support.http_upstream import RecordingUpstream

    boot = yaml.safe_load((FIXTURES / "envoy-examples" / "datadog-tracing_envoy.yaml").read_text())
    up = RecordingUpstream(["a"]).start()
    port, admin = free_port(), free_port()
    boot["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
    lst = boot["static_resources"]["listeners"][0]
    lst["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    ports = {"service1": up.ports["a"], "datadog_agent": agent.port}
    for c in boot["static_resources"]["clusters"]:
        for e in c["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            e["endpoint"]["address"]["socket_address"] = {
                "address": "127.0.0.1",
                "port_value": ports[c["name"]],
            }
    if kind == "envoy":
        proc = ProxyProcess.envoy(envoy_binary(), boot, tmp_path / kind)
    else:
        proc = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / kind)
    proc.start()
    try:
        t0 = time.time()
        answers = []
        for path, headers in EXAMPLE_REQUESTS:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path, headers={"host": "svc.local", **headers})
            r = conn.getresponse()
            r.read()
            answers.append((path, r.status))
            conn.close()
        spans = agent.wait(len(EXAMPLE_REQUESTS), timeout=15)
        up_seen = []
        for r in up.snapshot():
            h = {k.lower(): v for k, v in r.headers}
            up_seen.append(
                (r.target, {k: v for k, v in h.items() if "datadog" in k or k.startswith("trace")})
            )
            assert h["x-foobar-banana"] == ""  # "   " added by the route config, trimmed
        known = {1234, 5678, 0xB7AD6B7169203331, 0x8448EB211C80319C}
        return answers, *_norm(spans, up_seen, known, t0)
    finally:
        proc.stop()
        up.stop()


def test_example_traced_like_envoy(tmp_path):
    """Envoy's own Datadog example (OUTBOUND listener: egress spans; a health check filter
    answering /healthcheck; generate_request_id), served by both: same answers, spans and
    upstream headers."""
    seen = {}
    for kind in ("envoy", "sofamesh"):
        a = Agent()
        try:
            seen[kind] = _serve_example(kind, tmp_path, a)
        finally:
            a.stop()
    e, o = seen["envoy"], seen["sofamesh"]
    assert o[0] == e[0]
    assert len(e[1]) >= len(EXAMPLE_REQUESTS) - 1
    for a, b in zip(e[1], o[1], strict=True):
        assert a == b, json.dumps([a, b], indent=1)
    assert o[2] == e[2]
    by = {s["meta"]["http.url"].rsplit("/", 1)[1]: s for s in o[1]}
    assert by["plain"]["resource"] == "egress svc.local"
    assert by["plain"]["service"] == "envoy-demo"
    assert by["err"]["error"] == 1
    # the health check filter answered: the span is a user drop, the route's cluster named
    hc = by["healthcheck"]
    assert hc["metrics"] == {"_sampling_priority_v1": -1.0}
    assert hc["meta"]["upstream_cluster"] == "service1"


GRPC_SEEN: dict = {}


def test_datadog_grpc_spans_as_envoy(proxies, agent):  # noqa: F811
    """gRPC over HTTP/2 through the proxy: Envoy's grpc.* tags, and a server-fault status
    (UNAVAILABLE) marks the span an error even though the HTTP status is 200."""
    import grpc

    from tests.integration.http2.conftest import SERVICE

    p = proxies(
        hcm={"tracing": _tracing(random_sampling={"value": 100})},
        routes=[{"match": {"prefix": "/" + SERVICE + "/"}, "route": {"cluster": "grpc"}}],
        clusters=lambda grpc_port, h1_port: [_cluster("datadog_agent", agent.port, False)],
    )
    t0 = time.time()
    with p.channel() as ch:
        assert ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=10) == b"x"
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary(f"/{SERVICE}/Unary")(b"fail:UNAVAILABLE:down", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    spans = agent.wait(2)
    assert len(spans) == 2
    port = f":{p.port}"
    for s in spans:  # the client names the proxy's own port in its authority
        s["meta"] = {k: v.replace(port, ":PORT") for k, v in s["meta"].items()}
        # the caller's grpc-timeout as sent: grpcio writes the time left (10S, 9990m, ...)
        assert re.fullmatch(r"\d+[HMSmun]", s["meta"].pop("grpc.timeout"))
        s["resource"] = s["resource"].replace(port, ":PORT")
    norm, _ = _norm(spans, [], set(), t0)
    GRPC_SEEN[p.kind] = norm
    by = {s["meta"].get("grpc.status_code"): s for s in norm}
    assert by["0"]["error"] == 0 and by["14"]["error"] == 1
    assert by["14"]["meta"]["grpc.message"] == "down"
    assert by["14"]["meta"]["http.status_code"] == "200"
    if len(GRPC_SEEN) == 2:
        assert GRPC_SEEN["envoy"] == GRPC_SEEN["sofamesh"]


AGENT_TROUBLE: dict = {}


@pytest.mark.parametrize("trouble", ["down", "status500", "garbage"])
def test_datadog_agent_trouble_counted_as_envoy(proxies, agent, trouble):  # noqa: F811
    """The agent away (nothing listening), answering 500, or answering what is not JSON:
    requests are still served, the reports counted in the same tracing.datadog.* stats."""
    from tests.conftest import free_port

    if trouble == "down":
        port = free_port()
    else:
        port = agent.port
        agent.answer = None if trouble == "garbage" else agent.answer
        agent.status = 500 if trouble == "status500" else 200
    p = proxies(
        hcm={"tracing": _tracing(random_sampling={"value": 100})},
        routes=ROUTES,
        clusters=lambda grpc_port, h1_port: [_cluster("datadog_agent", port, False)],
    )
    for i in range(3):
        assert _get(p, f"/t{i}") == 200
    deadline = time.monotonic() + 15
    st: dict = {}
    while time.monotonic() < deadline:
        st = {k: v for k, v in p.stats().items() if k.startswith("tracing.datadog.")}
        if sum(st.values()) >= 1:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    st = {k: v for k, v in p.stats().items() if k.startswith("tracing.datadog.")}
    assert _get(p, "/after") == 200  # still serving
    AGENT_TROUBLE[(trouble, p.kind)] = st
    other = AGENT_TROUBLE.get((trouble, "envoy" if p.kind == "sofamesh" else "sofamesh"))
    if other is not None:
        assert st == other


SPAWN_ROUTES = [
    {
        "match": {"prefix": "/retry"},
        "route": {"cluster": "h1", "retry_policy": {"retry_on": "5xx", "num_retries": 1}},
    },
    *ROUTES,
]
SPAWN_SEEN: dict = {}


def test_datadog_spawn_upstream_span_as_envoy(proxies, agent):  # noqa: F811
    """spawn_upstream_span: each upstream attempt gets a "router <cluster> egress" child of
    the request's span, in the same trace chunk; the upstream's parent id is the child's; a
    retried attempt's span is there too (its 503 an error)."""
    p = proxies(
        hcm={"tracing": _tracing(random_sampling={"value": 100}, spawn_upstream_span=True)},
        routes=SPAWN_ROUTES,
        clusters=lambda grpc_port, h1_port: [_cluster("datadog_agent", agent.port, False)],
    )
    t0 = time.time()
    reqs = [
        ("/new", {}),
        ("/fail", {"x-upstream-action": "status=500"}),
        ("/dd", {"x-datadog-trace-id": "1234", "x-datadog-parent-id": "5678"}),
        ("/nf", {}),
        ("/retry", {"x-upstream-action": "fail=1", "x-case-id": f"dd-{p.kind}"}),
    ]
    for path, headers in reqs:
        _get(p, path, headers)
    spans = agent.wait(10)
    assert len(spans) == 10  # /nf has no upstream; /retry two attempts
    chunks = [t for _, _, tr in agent.reports for t in tr]
    assert sorted(len(t) for t in chunks) == [1, 2, 2, 2, 3]
    assert all(t[0]["parent_id"] in (0, 5678) for t in chunks)  # the local root first
    norm, heads = _norm(spans, _upstream(p), {1234, 5678}, t0)
    SPAWN_SEEN[p.kind] = (norm, heads)
    kids = [s for s in norm if s["resource"] == "router h1 egress"]
    assert len(kids) == 5 and all(k["parent_id"] != 0 for k in kids)
    assert sum(k["error"] for k in kids) == 2  # /fail's 500, /retry's first 503
    if len(SPAWN_SEEN) == 2:
        for a, b in zip(SPAWN_SEEN["envoy"][0], SPAWN_SEEN["sofamesh"][0], strict=True):
            assert a == b
        assert SPAWN_SEEN["envoy"][1] == SPAWN_SEEN["sofamesh"][1]
