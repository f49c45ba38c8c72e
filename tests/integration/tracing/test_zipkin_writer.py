"""sofamesh writes a plain Zipkin server span's JSON in C (_core/zipkin_json) and every other
span in Python (proxy/tracing). The two must report the same span: one sofamesh whose custom
tag name is beyond latin-1 (which the C writer leaves to Python) and one whose tag is plain
get the same requests, with header values that need JSON escaping (quotes, backslashes, a
tab, latin-1 letters) and a decorator; the collector must get the same spans from both."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.integration.http2.conftest import _cluster, proxies  # noqa: F401
from tests.integration.tracing.test_zipkin import COLLECTOR, ROUTES, ZIPKIN

ODD = 'a "quoted" \\ back\tslash caf\xe9 \xff'
REQUESTS = [
    ("/plain", {"user-agent": ODD}),
    ("/dec", {"x-tenant": ODD, "x-client-trace-id": "c-1"}),
    ("/nf", {"x-envoy-downstream-service-cluster": "front\\end"}),
    ('/parent?q="x"', {"x-b3-traceid": "0000000000000abc", "x-b3-spanid": "0000000000000def"}),
]


def _spans(p, tag: str) -> list[dict]:
    for path, headers in REQUESTS:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", path, headers={"host": "svc.local", **headers})
        conn.getresponse().read()
        conn.close()
    raw: list = []
    deadline = time.monotonic() + 20
    while len(raw) < len(REQUESTS) and time.monotonic() < deadline:
        time.sleep(0.2)
        raw = [r.body for r in p.upstream.snapshot() if r.target == COLLECTOR]
        raw = [s for body in raw for s in json.loads(body)]
    out = []
    for s in raw:
        tags = dict(s["tags"])
        tags["custom"] = tags.pop(tag)
        for k in ("guid:x-request-id", "peer.address"):
            assert tags.pop(k)
        dur = s.pop("duration")
        assert 0 <= dur < 10_000_000 and s["annotations"][0]["timestamp"] - s["timestamp"] == dur
        s.pop("timestamp")
        s.pop("annotations")
        s.pop("id")
        s["traceId"] = s["traceId"] if s["traceId"] == "0000000000000abc" else "new"
        out.append({**s, "tags": tags})
    return sorted(out, key=lambda s: s["tags"]["http.url"])


@pytest.mark.parametrize("proxies", ["sofamesh"], indirect=True)
def test_c_and_python_span_writers_report_the_same_spans(proxies):  # noqa: F811
    got = {}
    for tag in ("plain", "\u20acuro"):  # the euro sign: the C writer leaves it to Python
        zipkin = {
            **ZIPKIN,
            "custom_tags": [*ZIPKIN["custom_tags"], {"tag": tag, "literal": {"value": "v"}}],
        }
        p = proxies(
            hcm={"tracing": zipkin},
            routes=ROUTES,
            clusters=lambda grpc_port, h1_port: [_cluster("zipkin", h1_port, False)],
        )
        got[tag] = _spans(p, tag)
    c, py = got["plain"], got["\u20acuro"]
    assert len(c) == len(REQUESTS)
    by_url = {s["tags"]["http.url"]: s for s in c}
    assert by_url["http://svc.local/plain"]["tags"]["user_agent"] == ODD
    assert by_url["http://svc.local/dec"]["tags"]["tenant"] == ODD
    assert by_url["http://svc.local/dec"]["name"] == "op"
    assert by_url["http://svc.local/dec"]["tags"]["guid:x-client-trace-id"] == "c-1"
    assert by_url["http://svc.local/nf"]["tags"]["downstream_cluster"] == "front\\end"
    assert by_url['http://svc.local/parent?q="x"']["traceId"] == "0000000000000abc"
    assert c == py


KEEPALIVE_SEEN: dict = {}


def test_requests_on_one_connection_do_not_share_trace_state(proxies):  # noqa: F811
    """sofamesh reuses a connection's span context from one request to the next: a
    continued, sampled trace with a parent, then a new unsampled one, then a forced one, on
    one kept-alive connection must go upstream as through Envoy (no id, parent or decision
    left over from the request before)."""
    zipkin = {**ZIPKIN, "random_sampling": {"value": 0}}
    p = proxies(
        hcm={"tracing": zipkin},
        routes=ROUTES,
        clusters=lambda grpc_port, h1_port: [_cluster("zipkin", h1_port, False)],
    )
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    sent = [
        (
            "/one",
            {
                "x-b3-traceid": "0000000000000abc",
                "x-b3-spanid": "0000000000000def",
                "x-b3-parentspanid": "0000000000000111",
                "x-b3-sampled": "1",
            },
        ),
        ("/two", {}),
        ("/three", {"x-client-trace-id": "c-9"}),
        ("/four", {"x-b3-sampled": "0"}),
    ]
    for path, headers in sent:
        conn.request("GET", path, headers={"host": "svc.local", **headers})
        conn.getresponse().read()
    conn.close()
    ups = {r.target: dict(r.headers) for r in p.upstream.snapshot() if r.target != COLLECTOR}
    seen = {}
    for path, _ in sent:
        h = ups[path]
        tid = h.get("x-b3-traceid")
        seen[path] = (
            tid if tid == "0000000000000abc" else len(tid or ""),
            h.get("x-b3-spanid") == tid,
            h.get("x-b3-parentspanid"),
            h.get("x-b3-sampled"),
            h["x-request-id"][14],
        )
    assert ups["/two"]["x-b3-traceid"] != ups["/four"]["x-b3-traceid"]
    KEEPALIVE_SEEN[p.kind] = seen
    assert seen["/two"] == (16, True, None, "0", "4")
    if len(KEEPALIVE_SEEN) == 2:
        assert KEEPALIVE_SEEN["envoy"] == KEEPALIVE_SEEN["sofamesh"]
