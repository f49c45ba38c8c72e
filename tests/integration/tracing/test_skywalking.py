"""HCM tracing with envoy.tracers.skywalking against Envoy 1.40: Envoy's three SkyWalking
example configs (and one with sampling off) served by Envoy and by `sofamesh proxy`, each
reporting to its own stand-in OAP collector (tests/support/skywalking_oap.py). For the same
requests (a new trace, a caller's sw8 continued, an unreadable sw8, an upstream 503, a path
with a query, a route without upstream) the answers, the segments the collector receives
(spans, kinds, parents, refs, operation names, peers, layers, components, error marks, tags
in order), the sw8 headers the upstream receives and the x-request-id marks must be the
same, ids aside where they are new (compared by their relations), and so must the route
decorator's propagation (x-envoy-decorator-operation: to the client on ingress, upstream on
egress), which Envoy does for any tracer."""

from __future__ import annotations

import base64
import http.client
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import FIXTURES, envoy_binary, sofamesh_command
from tests.integration.http_filters.conftest import VOLATILE, ScriptedUpstream, _distinct
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.skywalking_oap import ScriptedOap


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


CALLER = "-".join(
    ["1", _b64("trace-caller-1"), _b64("seg-caller"), "3"]
    + [_b64(x) for x in ("svc-A", "inst-A", "/caller", "10.0.0.1:9000")]
)
REQUESTS = [
    ("a/b?x=1", {}),
    ("cont", {"sw8": CALLER}),
    ("bad", {"sw8": "garbage"}),
    ("err", {"x-resp-status": "503"}),
    ("ua", {"user-agent": "probe/1", "x-envoy-downstream-service-cluster": "c1"}),
]


def _prefixes(listener: dict) -> list[str]:
    """The route prefixes of a listener (each ends with /), and /nowhere/ (no route)."""
    out = []
    for f in listener["filter_chains"][0]["filters"]:
        for vh in f["typed_config"].get("route_config", {}).get("virtual_hosts", []):
            for r in vh["routes"]:
                p = r["match"].get("prefix", "/")
                out.append(p if p.endswith("/") else p + "/")
    return [*dict.fromkeys(out), "/nowhere/"]


UUID = re.compile(r"^[0-9a-zA-Z]{8}-[0-9a-zA-Z]{4}-[0-9a-zA-Z]{4}-[0-9a-zA-Z]{4}-[0-9a-zA-Z]{12}$")


class _Side:
    def __init__(self, kind: str, boot: dict, work: Path) -> None:
        self.oap = ScriptedOap().start()
        self.up = ScriptedUpstream().start()
        lst = boot["static_resources"]["listeners"]
        ports = _distinct(len(lst) + 1, {self.up.port, self.oap.port})
        self.ports, self.admin = ports[:-1], ports[-1]
        for li, p in zip(lst, self.ports, strict=True):
            li["address"]["socket_address"].update(address="127.0.0.1", port_value=p)
        for c in boot["static_resources"]["clusters"]:
            port = self.oap.port if c["name"] == "skywalking" else self.up.port
            for e in c["load_assignment"]["endpoints"]:
                for lb in e["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"].update(
                        address="127.0.0.1", port_value=port
                    )
        boot["admin"] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin}}
        }
        self.proc = (
            ProxyProcess.envoy(envoy_binary(), boot, work)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), boot, work)
        )
        self.proc.start()

    def stop(self) -> None:
        self.proc.stop()
        self.oap.stop()
        self.up.stop()

    def get(self, i: int, path: str, headers: dict) -> tuple:
        c = http.client.HTTPConnection("127.0.0.1", self.ports[i], timeout=10)
        try:
            c.request("GET", path, headers={"host": "svc.local", **headers})
            r = c.getresponse()
            body = r.read()
            hs = sorted((k.lower(), v) for k, v in r.getheaders() if k.lower() not in VOLATILE)
            return r.status, hs, body
        finally:
            c.close()

    def stats(self) -> dict[str, int]:
        _, text = admin_get(self.admin, "/stats")
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if k.startswith("tracing.skywalking.") or ".tracing." in k:
                out[k] = int(v)
        return out


class _Ids:
    """New ids named by first appearance, so relations (same trace, parent segment) are
    compared, not values."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, v: str) -> str:
        if not UUID.match(v):
            return v
        return self.names.setdefault(v, f"id{len(self.names)}")


def _norm_segments(segs: list, ids: _Ids, up_port: int) -> list:
    out = []
    for seg in segs:
        spans = []
        for sp in seg.spans:
            assert sp.endTime >= sp.startTime > 1_700_000_000_000
            spans.append(
                (
                    sp.spanId,
                    sp.parentSpanId,
                    [
                        (r.refType, r.traceId, r.parentTraceSegmentId, r.parentSpanId)
                        + (r.parentService, r.parentServiceInstance, r.parentEndpoint)
                        + (r.networkAddressUsedAtPeer,)
                        for r in sp.refs
                    ],
                    sp.operationName,
                    sp.peer.replace(f":{up_port}", ":UP"),
                    sp.spanType,
                    sp.spanLayer,
                    sp.componentId,
                    sp.isError,
                    sp.skipAnalysis,
                    [
                        (t.key, t.value.replace(f":{up_port}", ":UP"))
                        for t in sp.tags
                        if t.key != "guid:x-request-id"
                    ],
                )
            )
        out.append(
            (
                seg.traceId,
                seg.traceSegmentId,
                seg.service,
                seg.serviceInstance,
                seg.isSizeLimited,
                spans,
            )
        )
    # by operation name (the path), then service instance (one per listener); new ids are
    # named in that order
    out.sort(key=lambda s: (s[5][0][3], s[3], str(s[5])))
    return [(ids(s[0]), ids(s[1]), *s[2:]) for s in out]


def _norm_upstream(records: list, ids: _Ids, up_port: int) -> list:
    out = []
    for r in records:
        sw8 = r.header("sw8")
        rid = r.header("x-request-id")
        fields = None
        if sw8 and len(sw8[0].split("-")) != 8:
            fields = sw8  # passed on as it came
        elif sw8:
            p = sw8[0].split("-")
            assert p[0] == "1" and p[3] == "1", sw8
            dec = [base64.b64decode(x).decode() for x in p[1:3] + p[4:]]
            fields = [ids(dec[0]), ids(dec[1]), *dec[2:5], dec[5].replace(f":{up_port}", ":UP")]
        dec_op = r.header("x-envoy-decorator-operation")  # an egress route's decorator
        out.append((r.path, fields, rid[0][14] if rid else None, dec_op))
    return sorted(out, key=lambda x: (x[0], str(x[1])))


def _serve(kind: str, boot: dict, work: Path, n_expect: int):
    side = _Side(kind, boot, work)  # (boot's addresses are now the test's)
    try:
        answers = []
        for i, lst in enumerate(boot["static_resources"]["listeners"]):
            for prefix in _prefixes(lst):
                for path, headers in REQUESTS:
                    answers.append(side.get(i, prefix + path, headers))
        segs = side.oap.wait(n_expect, timeout=15)
        ids = _Ids()
        return (
            answers,
            _norm_segments(segs, ids, side.up.port),
            _norm_upstream(side.up.records, ids, side.up.port),
            side.stats(),
            set(side.oap.methods),
        )
    finally:
        side.stop()


EXAMPLES = [
    "skywalking_envoy-1.yaml",
    "skywalking_envoy-2.yaml",
    "skywalking_envoy-front-proxy.yaml",
]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_traced_like_envoy(name, tmp_path):
    text = (FIXTURES / "envoy-examples" / name).read_text()
    lsts = yaml.safe_load(text)["static_resources"]["listeners"]
    n = sum(len(_prefixes(lst)) for lst in lsts) * len(REQUESTS)
    e = _serve("envoy", yaml.safe_load(text), tmp_path / "envoy", n)
    o = _serve("sofamesh", yaml.safe_load(text), tmp_path / "sofamesh", n)
    assert o[0] == e[0]  # answers
    assert len(o[1]) == len(e[1]) == n
    assert o[1] == e[1]  # segments
    assert o[2] == e[2]  # what the upstream got: sw8, request-id marks, decorator
    if name == "skywalking_envoy-1.yaml":  # its second listener is OUTBOUND (egress)
        assert any(u[3] == ["routeToEnvoy2"] for u in o[2])
        assert any(("x-envoy-decorator-operation", "routeToService1") in a[1] for a in o[0])
    assert o[4] == e[4] == {"/skywalking.v3.TraceSegmentReportService/collect"}
    # the caller's trace is continued, its segment referenced
    cont = [s for s in o[1] if s[5][0][3].endswith("/cont")]
    assert cont and all(s[0] == "trace-caller-1" for s in cont)
    assert cont[0][5][0][2][0][1:4] == ("trace-caller-1", "seg-caller", 3)
    # an upstream 503 marks both spans
    errs = [sg for sg in o[1] if len(sg[5]) == 2 and ("status_code", "503") in sg[5][1][10]]
    assert errs and all(sg[5][0][8] and sg[5][1][8] for sg in errs)
    assert o[3] == e[3]  # tracing.skywalking.* and the connection manager's tracing.*
    assert o[3]["tracing.skywalking.segments_sent"] == n


def test_sampling_off_traces_only_requests_with_a_context(tmp_path):
    """random_sampling 0: a request without sw8 gets no segment and no sw8 upstream (Envoy's
    null span); one with sw8 (valid or not) is still traced."""
    text = (FIXTURES / "envoy-examples" / "skywalking_envoy-2.yaml").read_text()

    def boot() -> dict:
        b = yaml.safe_load(text)
        hcm = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        hcm["typed_config"]["tracing"]["random_sampling"] = {"value": 0}
        return b

    e = _serve("envoy", boot(), tmp_path / "envoy", 2)
    o = _serve("sofamesh", boot(), tmp_path / "sofamesh", 2)
    assert len(e[1]) == 2
    assert o[0] == e[0]
    assert o[1] == e[1]
    assert o[2] == e[2]
    assert sorted(s[5][0][3] for s in o[1]) == ["/cont", "/nowhere/cont"]
    assert [u[1] is None for u in o[2]] == [u[1] is None for u in e[2]]
