"""Differential HTTP/2 cases: an h2 client (the `h2` library) -> Envoy 1.40 and -> `sofamesh
proxy` on one bootstrap, to an HTTP/1.1 recording upstream (cluster "h1") and an HTTP/2
recording upstream (cluster "h2rec", tests/support/h2_peers.py). Each case's observation is
what the client got (status, headers, body, trailers, reset) and what the upstream received,
normalised by the rules of the HTTP/1 differential harness (tests/integration/differential/
harness.py NORMALISATIONS: date, server name, service time, request-id as a UUID, header
order across names, large bodies by digest); the two proxies must agree exactly.
"""

from __future__ import annotations

import http.client
import re
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.differential.harness import _retry_records, norm_body, norm_headers
from tests.support.h2_peers import (
    SCRIPTS,
    Exchange,
    H2RecordingUpstream,
    RawH2Upstream,
    h2_exchange,
)
from tests.support.h2raw import GOAWAY, H2Client
from tests.support.h2raw import req as h2req

from .conftest import _cluster
from .harness import KINDS, alive, start

ROUTES = [
    {
        "match": {"prefix": "/direct"},
        "direct_response": {"status": 200, "body": {"inline_string": "direct reply\n"}},
    },
    {"match": {"prefix": "/dead/"}, "route": {"cluster": "h2dead"}},
    {"match": {"prefix": "/h2rec/"}, "route": {"cluster": "h2rec"}},
    {"match": {"prefix": "/h2raw/"}, "route": {"cluster": "h2raw"}},
    {"match": {"prefix": "/h1/"}, "route": {"cluster": "h1"}},
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: Any):
    """Both proxies, each with its own upstreams."""
    out = {}
    try:
        for kind in KINDS:
            h2up = H2RecordingUpstream().start()
            raw = RawH2Upstream().start()
            try:
                r = start(
                    kind,
                    tmp_path_factory,
                    routes=ROUTES,
                    hcm={
                        "common_http_protocol_options": {"idle_timeout": "1.5s"},
                        "via": "1.1 mesh-test",
                    },
                    clusters=[
                        _cluster("h2rec", h2up.port, True),
                        _cluster("h2raw", raw.port, True),
                    ],
                )
            except Exception:
                h2up.stop()
                raw.stop()
                raise
            r.h2up = h2up  # type: ignore[attr-defined]
            r.h2raw = raw  # type: ignore[attr-defined]
            out[kind] = r
        yield out
    finally:
        for r in out.values():
            r.proc.stop()
            r.echo.stop()
            r.upstream.stop()
            r.h2up.stop()
            r.h2raw.stop()


def req(path: str, case: str, method: str = "GET", **extra: str) -> list[tuple[str, str]]:
    h = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "main.test")]
    h.append(("x-case-id", case))
    h += [(k.replace("_", "-"), v) for k, v in extra.items()]
    return h


def seen(x: Exchange) -> dict:
    return {
        "status": x.status,
        "headers": norm_headers([(k, v) for k, v in x.headers if k != "x-upstream-attempt"]),
        "body": norm_body(x.body),
        "trailers": norm_headers(x.trailers) if x.trailers is not None else None,
        "reset": x.reset,
        "goaway": x.goaway,
    }


def h1_records(r: Any, case: str, n: int = 1) -> list[dict]:
    deadline = time.monotonic() + 1.0
    while True:
        recs = [rec for rec in r.upstream.snapshot() if case in rec.header("x-case-id")]
        if len(recs) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return [
        {
            "request_line": f"{rec.method} {rec.target} {rec.version}",
            "headers": norm_headers(rec.headers),
            "body": norm_body(rec.body),
            "framing": rec.framing,
            "trailers": norm_headers(rec.trailers),
        }
        for rec in recs
    ]


def h2_records(r: Any, case: str, n: int = 1) -> list[dict]:
    recs = r.h2up.wait_case(case, n)
    return [
        {
            "headers": norm_headers(rec.headers),
            "body": norm_body(rec.body),
            "trailers": norm_headers(rec.trailers),
        }
        for rec in recs
    ]


Case = Callable[[Any, str], dict]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def deco(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return deco


def _h1(path: str, **kw: Any) -> Case:
    """A request to the HTTP/1.1 upstream; the observation: client side and upstream side."""

    def run(r: Any, c: str) -> dict:
        extra = kw.get("headers", {})
        x = h2_exchange(
            r.port,
            req("/h1/" + path, c, kw.get("method", "GET"), **extra),
            kw.get("body"),
            kw.get("trailers"),
            window=kw.get("window"),
            reset_after_headers=kw.get("reset_after_headers", False),
        )
        recs = h1_records(r, c, kw.get("n", 1))
        if kw.get("reset_after_headers"):
            # whether the reset request reached the upstream before its reset is a race
            # (on a busy machine either way, for both proxies): only the next one counts
            recs = [x for x in recs if not any(k == "x-upstream-action" for k, _ in x["headers"])]
            # and so is the upstream's count of requests for this case, echoed in the body
            out = seen(x)
            if isinstance(out["body"], bytes):
                out["body"] = re.sub(rb"attempt=\d+", b"attempt=N", out["body"])
            return {"client": out, "upstream": recs}
        return {"client": seen(x), "upstream": recs}

    return run


def _h2(path: str, **kw: Any) -> Case:
    """A request to the HTTP/2 upstream."""

    def run(r: Any, c: str) -> dict:
        extra = kw.get("headers", {})
        x = h2_exchange(
            r.port,
            req("/h2rec/" + path, c, kw.get("method", "GET"), **extra),
            kw.get("body"),
            kw.get("trailers"),
            window=kw.get("window"),
        )
        return {"client": seen(x), "upstream": h2_records(r, c)}

    return run


BIG = bytes(range(256)) * 4096  # 1 MiB

# -- h2c -> HTTP/1.1 ------------------------------------------------------------------------
for name, fn in {
    "h1 GET": _h1("get"),
    "h1 POST with content-length": _h1(
        "post", method="POST", body=b"hello world", headers={"content_length": "11"}
    ),
    "h1 POST without content-length (chunked upstream)": _h1(
        "post2", method="POST", body=b"abc" * 10000
    ),
    "h1 HEAD": _h1("head", method="HEAD"),
    "h1 upstream 404": _h1("s404", headers={"x_upstream_action": "status=404"}),
    "h1 upstream 204": _h1("s204", headers={"x_upstream_action": "status=204"}),
    "h1 upstream 500": _h1("s500", headers={"x_upstream_action": "status=500"}),
    "h1 upstream 100-continue before the answer": _h1(
        "i100", headers={"x_upstream_action": "interim-100"}
    ),
    "h1 request trailers (HTTP/1 side without enable_trailers)": _h1(
        "rqtr", method="POST", body=b"body", trailers=[("x-client-trailer", "c")]
    ),
    "h1 chunked response with a trailer": _h1("rstr", headers={"x_upstream_action": "trailers"}),
    "h1 chunked response": _h1("chunked", headers={"x_upstream_action": "chunked,size=5000"}),
    "h1 1 MiB response through a 16 KiB client window": _h1(
        "big", headers={"x_upstream_action": "size=1048576"}, window=16384
    ),
    "h1 1 MiB request body": _h1("bigreq", method="POST", body=BIG),
    "h1 upstream closes before answering: 503": _h1(
        "early", headers={"x_upstream_action": "close-early"}
    ),
    "h1 upstream resets mid-body": _h1("mid", headers={"x_upstream_action": "close-mid"}),
    "h1 two cookie fields joined for HTTP/1": _h1("cookie", headers={"cookie": "a=1"}),
    "h1 te: trailers": _h1("te", headers={"te": "trailers"}),
    "h1 client x-forwarded-for and x-forwarded-proto": _h1(
        "xff", headers={"x_forwarded_for": "10.1.2.3", "x_forwarded_proto": "https"}
    ),
    "h1 client x-request-id kept": _h1("rid", headers={"x_request_id": "my-request-id-1"}),
    "h1 20 KiB of response headers": _h1("hh", headers={"x_upstream_action": "huge-headers=20"}),
    "h1 client resets a stream; the connection serves the next": _h1(
        "rst",
        method="POST",
        headers={"x_upstream_action": "delay=300"},
        reset_after_headers=True,
        n=2,
    ),
    "h1 expect: 100-continue from an h2 client": _h1(
        "expect", method="POST", body=b"x", headers={"expect": "100-continue"}
    ),
    "h1 response with connection: close from upstream": _h1(
        "close", headers={"x_upstream_action": "close"}
    ),
    "h1 upstream 1xx-free 304": _h1("s304", headers={"x_upstream_action": "status=304"}),
    "h1 OPTIONS": _h1("opt", method="OPTIONS"),
    "h1 query string and encoded path": _h1("a%20b/c?x=1&y=%2F"),
}.items():
    case(name)(fn)


@case("h1 two cookie fields joined for HTTP/1 (two crumbs)")
def _(r: Any, c: str) -> dict:
    h = [*req("/h1/cookie2", c), ("cookie", "a=1"), ("cookie", "b=2")]
    x = h2_exchange(r.port, h)
    return {"client": seen(x), "upstream": h1_records(r, c)}


# -- local replies ----------------------------------------------------------------------------
@case("local 404: no route")
def _(r: Any, c: str) -> dict:
    return {"client": seen(h2_exchange(r.port, req("/nowhere", c)))}


@case("local direct_response")
def _(r: Any, c: str) -> dict:
    return {"client": seen(h2_exchange(r.port, req("/direct", c)))}


@case("local direct_response to HEAD")
def _(r: Any, c: str) -> dict:
    return {"client": seen(h2_exchange(r.port, req("/direct", c, "HEAD")))}


@case("local 503: HTTP/2 cluster with nothing listening")
def _(r: Any, c: str) -> dict:
    return {"client": seen(h2_exchange(r.port, req("/dead/x", c)))}


@case("local 503 with a request body")
def _(r: Any, c: str) -> dict:
    return {"client": seen(h2_exchange(r.port, req("/dead/x", c, "POST"), b"body" * 1000))}


# -- h2c -> h2c --------------------------------------------------------------------------------
for name, fn in {
    "h2 GET": _h2("get"),
    "h2 POST": _h2("post", method="POST", body=b"hello h2"),
    "h2 HEAD": _h2("head", method="HEAD"),
    "h2 upstream 404": _h2("s404", headers={"x_upstream_action": "status=404"}),
    "h2 upstream 503": _h2("s503", headers={"x_upstream_action": "status=503"}),
    "h2 request trailers reach the upstream": _h2(
        "rqtr", method="POST", body=b"body", trailers=[("x-client-trailer", "c")]
    ),
    "h2 response trailers reach the client": _h2("rstr", headers={"x_upstream_action": "trailers"}),
    "h2 upstream resets before answering": _h2("rst", headers={"x_upstream_action": "rst"}),
    "h2 upstream resets mid-body": _h2(
        "rstmid", headers={"x_upstream_action": "rst-mid,size=100000"}
    ),
    "h2 2 MiB response through a 16 KiB client window": _h2(
        "big", headers={"x_upstream_action": "size=2097152"}, window=16384
    ),
    "h2 2 MiB request body": _h2("bigreq", method="POST", body=BIG * 2),
    "h2 te: trailers kept for HTTP/2": _h2("te", headers={"te": "trailers"}),
    "h2 upstream GOAWAY after answering": _h2("goaway", headers={"x_upstream_action": "goaway"}),
    "h2 cookie crumbs": _h2("cookie", headers={"cookie": "a=1; b=2"}),
    "h2 client x-forwarded-proto kept": _h2("xfp", headers={"x_forwarded_proto": "https"}),
}.items():
    case(name)(fn)


@case("h2 after the upstream's GOAWAY the next request gets a new connection")
def _(r: Any, c: str) -> dict:
    a = h2_exchange(r.port, req("/h2rec/g1", c, x_upstream_action="goaway"))
    b = h2_exchange(r.port, req("/h2rec/g2", c))
    return {"first": seen(a), "second": seen(b), "upstream": h2_records(r, c, 2)}


@case("idle connection: GOAWAY after common_http_protocol_options.idle_timeout, then close")
def _(r: Any, c: str) -> dict:
    """Envoy drains an idle HTTP/2 connection in two steps: GOAWAY(NO_ERROR, 2^31-1), then
    after the HCM drain_timeout (5 s by default) GOAWAY(NO_ERROR, last stream) and close."""
    with H2Client(r.port, timeout=10) as cl:
        cl.handshake()
        cl.request(1, h2req(path="/h1/idle", x_case_id=c))
        first = cl.outcome(1)
        t0 = time.monotonic()
        seen_ = []
        while time.monotonic() - t0 < 10:
            f = cl.read_frame(max(0.05, 10 - (time.monotonic() - t0)))
            if f is None:
                break
            if f.type == GOAWAY:
                seen_.append((f.code, f.last_stream_id, time.monotonic() - t0))
        closed_at = time.monotonic() - t0 if cl.eof else None

    def when(t: float) -> str:  # idle_timeout 1.5 s, drain_timeout 5 s (Envoy's default)
        return "after idle_timeout" if t < 4 else "after idle_timeout + drain_timeout"

    last = seen_[-1][2] if seen_ else 0.0
    return {
        "first": first.status,
        "goaways": [(code, sid, when(t)) for code, sid, t in seen_],
        "closed": None
        if closed_at is None
        else ("with the last GOAWAY" if closed_at - last < 2.5 else "later"),
    }


# -- h2c -> an HTTP/2 upstream that misbehaves (tests/support/h2_peers.py SCRIPTS) -----------
def _raw(script: str) -> Case:
    def run(r: Any, c: str) -> dict:
        x = h2_exchange(r.port, req("/h2raw/" + script, c), timeout=5)
        # and the proxy still serves through that cluster afterwards
        y = h2_exchange(r.port, req("/h2raw/ok", c), timeout=5)
        return {"client": seen(x), "next": seen(y)}

    return run


for script in SCRIPTS:
    if script != "ok":
        case(f"h2 upstream misbehaves: {script}")(_raw(script))


def _observe(r: Any) -> dict[str, Any]:
    def one(name: str) -> Any:
        try:
            return CASES[name](r, f"c{list(CASES).index(name):03d}")
        except Exception:  # noqa: BLE001  (shown as the observation: it will differ)
            return traceback.format_exc()

    # cases that make the upstream close its connection run alone, after the others (a
    # stream of another case on that connection would be lost: a difference of pooling)
    serial = [n for n in CASES if "GOAWAY" in n or "misbehaves" in n]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futs = {n: pool.submit(one, n) for n in CASES if n not in serial}
        out = {n: f.result() for n, f in futs.items()}
    for n in serial:
        out[n] = one(n)
    alive(r)
    return out


@pytest.fixture(scope="module")
def observed(pair: dict) -> dict[str, dict[str, Any]]:
    return {kind: _observe(r) for kind, r in pair.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_h2_differential(observed: dict, name: str) -> None:
    e, s = observed["envoy"][name], observed["sofamesh"][name]
    assert not isinstance(e, str), f"envoy: {e}"
    assert s == e


def test_case_count() -> None:
    assert len(CASES) >= 40


def admin_post(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _drain_observation(r: Any) -> dict:
    """A slow request in flight on an h2 connection when the admin's
    /drain_listeners?graceful starts an immediate drain: the GOAWAYs the client gets, how
    the stream ends, and when the connection closes."""
    with H2Client(r.port, timeout=10) as cl:
        cl.handshake()
        cl.request(1, h2req(path="/h1/drain", x_upstream_action="delay=1000"))
        time.sleep(0.2)
        admin_post(r.admin, "/drain_listeners?graceful")
        t0 = time.monotonic()
        goaways = []
        status = None
        ended = None
        while time.monotonic() - t0 < 8:
            f = cl.read_frame(max(0.05, 8 - (time.monotonic() - t0)))
            if f is None:
                break
            if f.type == GOAWAY:
                goaways.append((f.code, f.last_stream_id))
            elif f.sid == 1 and f.fields and status is None:
                status = dict(f.fields).get(":status")
            if f.sid == 1 and f.flags & 1 and f.type in (0, 1):
                ended = "END_STREAM"
        return {"stream 1": (status, ended), "goaways": goaways, "closed": cl.eof}


def test_graceful_drain_of_an_h2_connection(tmp_path_factory: Any) -> None:
    seen_ = {}
    for kind in KINDS:
        r = start(
            kind,
            tmp_path_factory,
            routes=[{"match": {"prefix": "/"}, "route": {"cluster": "h1"}}],
            extra_args=["--drain-strategy", "immediate", "--drain-time-s", "2"],
        )
        try:
            seen_[kind] = _drain_observation(r)
            alive(r)
        finally:
            r.proc.stop()
            r.echo.stop()
            r.upstream.stop()
    assert seen_["envoy"]["stream 1"] == ("200", "END_STREAM"), seen_
    assert seen_["sofamesh"] == seen_["envoy"]


def test_via_on_h2_requests_responses_and_local_replies(tmp_path_factory: Any) -> None:
    """HCM `via`: added to the request the upstream gets, to the proxied response, and to
    the proxy's own replies (a direct_response, a 503, a 404)."""
    seen_ = {}
    routes = [*ROUTES, {"match": {"prefix": "/"}, "route": {"cluster": "h1"}}]
    routes = [r for r in routes if r["match"]["prefix"] not in ("/h2rec/", "/h2raw/")]
    for kind in KINDS:
        r = start(kind, tmp_path_factory, routes=routes[:-1], hcm={"via": "1.1 mesh-test"})
        try:
            out = {}
            for path in ("/h1/via", "/direct", "/dead/x", "/nowhere"):
                x = h2_exchange(r.port, req(path, "via"))
                out[path] = (x.status, dict(x.headers).get("via"))
            out["upstream"] = [rec["headers"] for rec in h1_records(r, "via")]
            seen_[kind] = out
        finally:
            r.proc.stop()
            r.echo.stop()
            r.upstream.stop()
    assert seen_["envoy"]["/h1/via"] == (200, "1.1 mesh-test"), seen_
    assert seen_["sofamesh"] == seen_["envoy"]


H1 = {"cluster": "h1"}
VARIANTS: dict[str, tuple[dict, list[dict], list[tuple[str, dict[str, str]]]]] = {
    "server_name": (
        {"server_name": "mesh-edge"},
        [{"match": {"prefix": "/"}, "route": H1}],
        [("/a", {}), ("/b", {})],
    ),
    "server_header_transformation PASS_THROUGH": (
        {"server_header_transformation": "PASS_THROUGH"},
        [{"match": {"prefix": "/"}, "route": H1}],
        [("/a", {})],
    ),
    "always_set_request_id_in_response": (
        {"always_set_request_id_in_response": True},
        [{"match": {"prefix": "/"}, "route": H1}],
        [("/a", {}), ("/b", {"x-request-id": "given-id"})],
    ),
    "use_remote_address": (
        {"use_remote_address": True},
        [{"match": {"prefix": "/"}, "route": H1}],
        [("/a", {}), ("/b", {"x-forwarded-for": "10.0.0.1"})],
    ),
    "generate_request_id false": (
        {"generate_request_id": False},
        [{"match": {"prefix": "/"}, "route": H1}],
        [("/a", {})],
    ),
    "route timeout 0.5 s, slow upstream: 504": (
        {},
        [{"match": {"prefix": "/"}, "route": {"cluster": "h1", "timeout": "0.5s"}}],
        [("/slow", {"x-upstream-action": "delay=1500"})],
    ),
    "retry_on 5xx: a 503 then 200": (
        {},
        [
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "h1", "retry_policy": {"retry_on": "5xx", "num_retries": 2}},
            }
        ],
        [("/retry", {"x-upstream-action": "fail=1", "x-case-id": "retry-1"})],
    ),
    "request and response headers added and removed by the route": (
        {},
        [
            {
                "match": {"prefix": "/"},
                "route": H1,
                "request_headers_to_add": [{"header": {"key": "x-added", "value": "r"}}],
                "request_headers_to_remove": ["x-drop"],
                "response_headers_to_add": [{"header": {"key": "x-resp", "value": "s"}}],
                "response_headers_to_remove": ["x-upstream-name"],
            }
        ],
        [("/hdrs", {"x-drop": "1", "x-keep": "2"})],
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hcm_and_route_options_over_h2(tmp_path_factory: Any, variant: str) -> None:
    hcm, routes, requests = VARIANTS[variant]
    seen_ = {}
    for kind in KINDS:
        r = start(kind, tmp_path_factory, routes=routes, hcm=hcm)
        try:
            out = []
            for i, (path, extra) in enumerate(requests):
                cid = f"{variant[:10]}-{i}"
                h = [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", path),
                    (":authority", "main.test"),
                ]
                h += (
                    [("x-case-id", cid), *extra.items()]
                    if "x-case-id" not in extra
                    else list(extra.items())
                )
                x = h2_exchange(r.port, h)
                n = 2 if "fail=1" in extra.get("x-upstream-action", "") else 1  # with the retry
                # a retry's x-envoy-expected-rq-timeout-ms is the budget minus elapsed time
                recs = _retry_records(h1_records(r, extra.get("x-case-id", cid), n))
                out.append({"client": seen(x), "upstream": recs})
            seen_[kind] = out
        finally:
            r.proc.stop()
            r.echo.stop()
            r.upstream.stop()
    assert seen_["sofamesh"] == seen_["envoy"]
