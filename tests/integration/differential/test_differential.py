"""The same raw requests through real Envoy 1.40 and through sofamesh: what clients and upstreams see must match.

Each case first checks Envoy's answer against ``expect`` (so a case that no longer tests what
it says fails loudly), then requires sofamesh's normalised observation to equal Envoy's.
Normalisations live in ``harness.NORMALISATIONS``; divergences found are in DIVERGENCES.md.
"""

from __future__ import annotations

import pprint

import pytest

from tests.integration.differential.harness import FEATURES, HOST, Case, observe, request

C = Case
R = request


def _huge_headers(total: int) -> list[tuple[str, str]]:
    return [(f"x-big-{i}", "v" * 1000) for i in range(total // 1024 + 1)]


def _chunked_with_trailer(path: str, headers: list[tuple[str, str]] = ()) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (
        f"POST {path} HTTP/1.1\r\nHost: main.test\r\n{extra}Transfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t1\r\nx-trailer-two: t2\r\n\r\n"
    ).encode()


def _head_100(path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: main.test\r\nContent-Length: 11\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()


CASES: list[Case] = [
    # --- methods and bodies -------------------------------------------------------------------
    C(
        "get",
        R("GET", "/a/get?x=1&y=two", [("User-Agent", "diff/1"), ("X-Dup", "1"), ("X-Dup", "2")]),
        [200],
    ),
    C("head", R("HEAD", "/a/head"), [200], methods=["HEAD"]),
    C(
        "post-content-length",
        R("POST", "/a/post", [("Content-Type", "text/plain")], b"hello world"),
        [200],
    ),
    C("post-empty-body", R("POST", "/a/empty", body=b""), [200]),
    C("put-chunked", R("PUT", "/a/put", body=b"chunked body " * 5, chunked=True), [200]),
    C(
        "post-chunked-trailers",
        b"POST /a/trailers HTTP/1.1\r\nHost: main.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nx-trailer: t1\r\n\r\n",
        [200],
    ),
    C("delete", R("DELETE", "/a/item/7"), [200]),
    C("trace", R("TRACE", "/a/trace"), [200]),
    C("get-with-body", R("GET", "/a/gb", body=b"get body", content_length=True), [200]),
    C(
        "connect-method-not-configured",
        b"CONNECT main.test:443 HTTP/1.1\r\nHost: main.test:443\r\n\r\n",
        [404],
    ),
    C(
        "header-value-inner-whitespace-kept",
        b"GET /a/ws HTTP/1.1\r\nHost: main.test\r\nX-Trim: \t value with  inner   \t \r\n\r\n",
        [200],
    ),
    C("extension-method-purge", R("PURGE", "/a/cache"), [200]),
    C("options", R("OPTIONS", "/a/opt"), [200]),
    C("patch", R("PATCH", "/a/patch", body=b'{"k": 1}'), [200]),
    C("upload-1MiB", R("POST", "/a/upload", body=bytes(range(256)) * 4096), [200]),
    C(
        "upload-chunked-split-writes",
        [
            b"POST /a/split HTTP/1.1\r\nHost: main.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"4\r\nwiki\r\n",
            b"5\r\npedia\r\n",
            b"0\r\n\r\n",
        ],
        [200],
    ),
    C("download-1MiB", R("GET", "/a/big", [("x-upstream-action", "size=1048576")]), [200]),
    C(
        "upstream-chunked-reply",
        R("GET", "/a/chunked", [("x-upstream-action", "chunked,size=100")]),
        [200],
    ),
    C(
        "upstream-eof-delimited-reply",
        R("GET", "/a/eof", [("x-upstream-action", "eof-body")]),
        [200],
    ),
    C("upstream-connection-close", R("GET", "/a/uclose", [("x-upstream-action", "close")]), [200]),
    C(
        "upstream-status-passthrough",
        R("GET", "/a/teapot", [("x-upstream-action", "status=418")]),
        [418],
    ),
    C("upstream-garbage-reply", R("GET", "/a/g", [("x-upstream-action", "garbage-reply")]), [502]),
    # Envoy's limit on upstream response headers is larger than the downstream 60 KiB one.
    C(
        "upstream-reply-headers-61KiB",
        R("GET", "/a/hh", [("x-upstream-action", "huge-headers=61")]),
        [200],
    ),
    C(
        "upstream-reply-headers-100KiB",
        R("GET", "/a/hh", [("x-upstream-action", "huge-headers=100")]),
        [502],
    ),
    C("upstream-interim-100", R("GET", "/a/i", [("x-upstream-action", "interim-100")]), [200]),
    C("upstream-reply-trailers", R("GET", "/a/tr", [("x-upstream-action", "trailers")]), [200]),
    C(
        "upstream-304",
        R("GET", "/a/nm", [("x-upstream-action", "status=304"), ("If-None-Match", '"x"')]),
        [304],
    ),
    C(
        "head-upstream-chunked",
        R("HEAD", "/a/hc", [("x-upstream-action", "chunked")]),
        [200],
        methods=["HEAD"],
    ),
    C("upstream-204", R("GET", "/a/nocontent", [("x-upstream-action", "status=204")]), [204]),
    # Upstream framing Envoy refuses (issue 7): 502 "protocol error", the client connection kept.
    C(
        "upstream-reply-length-and-chunked",
        R("GET", "/a/desync", [("x-upstream-action", "cl-and-chunked,size=100")]),
        [502],
    ),
    C(
        "head-upstream-reply-length-and-chunked",
        R("HEAD", "/a/desync", [("x-upstream-action", "cl-and-chunked")]),
        [502],
        methods=["HEAD"],
    ),
    C(
        "upstream-reply-content-length-twice-same",
        R("GET", "/a/dupcl", [("x-upstream-action", "dup-cl")]),
        [502],
    ),
    C(
        "upstream-reply-content-length-twice-differ",
        R("GET", "/a/dupcl", [("x-upstream-action", "dup-cl-differ")]),
        [502],
    ),
    C(
        "upstream-reply-content-length-list",
        R("GET", "/a/dupcl", [("x-upstream-action", "cl-list")]),
        [502],
    ),
    # --- connection management ----------------------------------------------------------------
    C("client-connection-close", R("GET", "/a/bye", [("Connection", "close")]), [200]),
    C("http10-rejected", R("GET", "/a/old", version="HTTP/1.0"), [426]),
    C(
        "pipelined-3",
        R("GET", "/a/p1") + R("POST", "/a/p2", body=b"two") + R("GET", "/a/p3"),
        [200, 200, 200],
    ),
    # Envoy answers a pipelined request that gets a local reply, then closes the connection:
    # its flood check still counts the content-length reply before it (see below).
    C(
        "pipelined-with-404",
        R("GET", "/a/q1") + R("GET", "/nowhere") + R("GET", "/a/q3"),
        [200, 404, None],
    ),
    C(
        "pipelined-head-then-get",
        R("HEAD", "/a/h1") + R("GET", "/a/h2"),
        [200, 200],
        methods=["HEAD", "GET"],
    ),
    # A local reply keeps the connection and Envoy answers what is pipelined behind it, up to
    # its HTTP/1 flood check: a request that begins while two responses count as queued
    # closes the connection unanswered, counted and logged as `0 DPE`. Two local replies in
    # one read count; so does a proxied content-length reply until the next response's head
    # is written, even in a later read (http_proxy.pyx _flood).
    C("pipelined-no-route-then-proxied", R("GET", "/nowhere") + R("GET", "/a/n2"), [404, 200]),
    C(
        "pipelined-direct-response-then-proxied",
        R("GET", "/direct/d1") + R("GET", "/a/d2"),
        [403, 200],
    ),
    C("pipelined-redirect-then-proxied", R("GET", "/redirect/r1") + R("GET", "/a/r2"), [301, 200]),
    C(
        "pipelined-head-no-route-then-get",
        R("HEAD", "/nowhere") + R("GET", "/a/h2"),
        [404, 200],
        methods=["HEAD", "GET"],
    ),
    C(
        "pipelined-no-route-then-post",
        R("GET", "/nowhere") + R("POST", "/a/p2", body=b"two") + R("GET", "/a/p3"),
        [404, 200, 200],
    ),
    C("pipelined-proxied-then-no-route", R("GET", "/a/q1") + R("GET", "/nowhere"), [200, 404]),
    C("pipelined-two-local-replies", R("GET", "/nowhere") + R("GET", "/direct/d2"), [404, 403]),
    C(
        "pipelined-flood-two-local-replies-then-request",
        R("GET", "/nowhere") + R("GET", "/nowhere/2") + R("GET", "/a/f3"),
        [404, 404, None],
    ),
    C(
        "pipelined-flood-three-direct-responses",
        R("GET", "/direct/1") + R("GET", "/direct/2") + R("GET", "/direct/3"),
        [403, 403, None],
    ),
    C(
        "pipelined-flood-local-reply-after-upstream-reply",
        R("GET", "/nowhere") + R("GET", "/a/f2") + R("GET", "/nowhere/3") + R("GET", "/a/f4"),
        [404, 200, 404, None],
    ),
    C(
        "pipelined-flood-partial-request",
        R("GET", "/nowhere") + R("GET", "/nowhere/2") + b"GE",
        [404, 404],
    ),
    C(
        "pipelined-flood-local-reply-after-chunked-reply",
        R("GET", "/nowhere")
        + R("GET", "/a/c2", [("x-upstream-action", "chunked,size=10")])
        + R("GET", "/nowhere/3")
        + R("GET", "/a/c4"),
        [404, 200, 404, 200],
    ),
    C(
        "later-read-local-reply-after-content-length-reply",
        [R("GET", "/a/l1"), R("GET", "/nowhere") + R("GET", "/a/l3")],
        [200, 404, None],
    ),
    C(
        "later-read-local-reply-after-chunked-reply",
        [
            R("GET", "/a/l1", [("x-upstream-action", "chunked,size=10")]),
            R("GET", "/nowhere") + R("GET", "/a/l3"),
        ],
        [200, 404, 200],
    ),
    C(
        "later-read-local-reply-after-local-reply",
        [R("GET", "/nowhere"), R("GET", "/nowhere/2") + R("GET", "/a/l3")],
        [404, 404, 200],
    ),
    C(
        "later-read-local-reply-after-empty-reply",
        [
            R("GET", "/a/l1", [("x-upstream-action", "size=0")]),
            R("GET", "/nowhere") + R("GET", "/a/l3"),
        ],
        [200, 404, 200],
    ),
    C(
        "later-reads-two-local-replies-after-content-length-reply",
        [R("GET", "/a/l1"), R("GET", "/nowhere"), R("GET", "/nowhere/3") + R("GET", "/a/l4")],
        [200, 404, 404, 200],
    ),
    C(
        "pipelined-no-route-post-body-unread",
        R("GET", "/nowhere") + R("POST", "/nowhere", body=b"abc") + R("GET", "/a/p3"),
        [404, 404, None],
    ),
    C("expect-100-continue", [_head_100("/a/expect"), b"hello world"], [200], kind="expect100"),
    C("expect-100-no-route", [_head_100("/nowhere"), b"hello world"], [404], kind="expect100"),
    C(
        "expect-100-direct-response",
        [_head_100("/direct/e"), b"hello world"],
        [403],
        kind="expect100",
    ),
    C(
        "hop-by-hop-headers",
        R(
            "GET",
            "/a/hop",
            [
                ("Connection", "keep-alive, x-hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
            ],
        ),
        [200],
    ),
    C("client-x-forwarded-proto", R("GET", "/a/xfp", [("X-Forwarded-Proto", "https")]), [200]),
    C(
        "client-x-envoy-expected-rq-timeout-ms",
        R("GET", "/a/xe", [("x-envoy-expected-rq-timeout-ms", "1")]),
        [200],
    ),
    C("header-with-underscore", R("GET", "/a/us", [("x_under_score", "1")]), [200]),
    C("headers-58KiB-under-limit", R("GET", "/a/big-h", _huge_headers(58 * 1024)), [200]),
    C(
        "te-chunked-mixed-case-and-extension",
        b"POST /a/te2 HTTP/1.1\r\nHost: main.test\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n0\r\n\r\n",
        [200],
    ),
    C(
        "content-length-leading-zeros",
        R("POST", "/a/lz", [("Content-Length", "005")], b"hello", content_length=False),
        [200],
    ),
    # Envoy joins the two Host values into one authority, which no virtual host matches.
    C("two-host-headers", R("GET", "/a/2h", [("Host", "other.test")]), [404]),
    C(
        "connection-close-then-pipelined",
        R("GET", "/a/c1", [("Connection", "close")]) + R("GET", "/a/c2"),
        [200, None],
    ),
    C("client-x-forwarded-for", R("GET", "/a/xff", [("X-Forwarded-For", "203.0.113.7")]), [200]),
    C(
        "websocket-upgrade",
        R(
            "GET",
            "/ws/chat",
            [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
                ("x-upstream-action", "ws"),
            ],
        ),
        [101],
        kind="websocket",
    ),
    # --- routing ------------------------------------------------------------------------------
    C("route-path-exact", R("GET", "/exact"), [200]),
    C("route-path-exact-no-prefix-match", R("GET", "/exact/more"), [404]),
    C("route-regex", R("GET", "/regex/123"), [200]),
    C("route-regex-full-match-only", R("GET", "/regex/123x"), [404]),
    C("route-header-match", R("GET", "/hdr", [("x-variant", "b")]), [200]),
    C("route-header-mismatch-falls-through", R("GET", "/hdr", [("x-variant", "c")]), [200]),
    C("route-prefix-and-host-rewrite", R("GET", "/rewrite/x/y?q=1"), [200]),
    C(
        "route-header-add-remove",
        R(
            "GET",
            "/headers",
            [
                ("x-added", "client"),
                ("x-overwrite", "client"),
                ("x-remove-me", "gone"),
                ("x-upstream-action", "secret"),
            ],
        ),
        [200],
    ),
    C(
        "route-header-add-if-absent-present",
        R("GET", "/headers", [("x-if-absent", "client")]),
        [200],
    ),
    C("route-direct-response", R("GET", "/direct/x"), [403]),
    C("route-redirect", R("GET", "/redirect/x?q=1"), [301]),
    C("route-weighted-0-100", R("GET", "/weighted-b"), [200]),
    C("route-weighted-50-50", R("GET", "/weighted"), [200] * 40, kind="weighted"),
    C("route-query-parameter-match", R("GET", "/qp?u=1&v=2"), [200]),
    C("route-query-parameter-mismatch", R("GET", "/qp?v=3"), [200]),
    C("route-case-insensitive-prefix", R("GET", "/caseless/X"), [200]),
    C("route-header-present", R("GET", "/present", [("x-flag", "")]), [200]),
    C("route-header-absent", R("GET", "/present"), [200]),
    C("vhost-wildcard-prefix", R("GET", "/p", host="pre.example"), [200]),
    C("vhost-wildcard-suffix", R("GET", "/any", host="api.wild.test"), [200]),
    C("vhost-unknown-host-404", R("GET", "/a/x", host="unknown.test"), [404]),
    C("vhost-host-with-port-404", R("GET", "/a/x", host=f"{HOST}:80"), [404]),
    C("no-route-404", R("GET", "/nothing/here"), [404]),
    C("no-route-404-post-with-body", R("POST", "/nothing/here", body=b"x" * 1000), [404]),
    C("direct-response-post-chunked", R("POST", "/direct/p", body=b"y" * 100, chunked=True), [403]),
    C("path-not-normalised", R("GET", "/a/%2e%2e/b//c"), [200]),
    C("absolute-form-target", R("GET", f"http://{HOST}/a/abs", host=HOST), [200]),
    # --- upstream failures, timeouts, retries -------------------------------------------------
    C("dead-upstream-503", R("GET", "/dead"), [503]),
    C("dead-upstream-connect-failure-retry", R("GET", "/dead-retry"), [503]),
    C("upstream-timeout-504", R("GET", "/slow", [("x-upstream-action", "delay=1500")]), [504]),
    C(
        "upstream-closes-mid-response",
        R("GET", "/a/mid", [("x-upstream-action", "close-mid")]),
        [200],
    ),
    C(
        "upstream-closes-before-reply",
        R("GET", "/a/early", [("x-upstream-action", "close-early")]),
        [503],
    ),
    C(
        "retry-5xx-recovers",
        R("GET", "/retry", [("x-case-id", "r1"), ("x-upstream-action", "fail=1")]),
        [200],
    ),
    C(
        "retry-5xx-exhausted",
        R("GET", "/retry", [("x-case-id", "r2"), ("x-upstream-action", "fail=9")]),
        [503],
    ),
    C(
        "no-retry-without-policy",
        R("GET", "/a/r", [("x-case-id", "r3"), ("x-upstream-action", "fail=1")]),
        [503],
    ),
    # --- Envoy's x-envoy-* request headers: with this bootstrap Envoy does not honour the retry
    # and timeout ones (and strips them); a client's own x-request-id is kept. ----------------
    C(
        "client-x-request-id-kept",
        R("GET", "/a/rid", [("x-request-id", "client-chosen-id-1")]),
        [200],
    ),
    C(
        "client-x-envoy-retry-on",
        R(
            "GET",
            "/a/rr",
            [("x-case-id", "r4"), ("x-upstream-action", "fail=1"), ("x-envoy-retry-on", "5xx")],
        ),
        [503],
    ),
    C(
        "client-x-envoy-upstream-rq-timeout-ms",
        R(
            "GET",
            "/a/t",
            [("x-upstream-action", "delay=1000"), ("x-envoy-upstream-rq-timeout-ms", "300")],
        ),
        [200],
    ),
    C("fragment-in-target", R("GET", "/a/frag#part"), [400]),
    # --- bad requests -------------------------------------------------------------------------
    C("garbage", b"HELLO THERE\r\n\r\n", [400]),
    C("binary-garbage", bytes(range(1, 200)) + b"\r\n\r\n", [400]),
    C("bad-header-line", b"GET /a/x HTTP/1.1\r\nHost: main.test\r\nNo colon here\r\n\r\n", [400]),
    C("space-before-colon", b"GET /a/x HTTP/1.1\r\nHost: main.test\r\nX-Bad : v\r\n\r\n", [400]),
    C(
        "nul-in-header-value",
        b"GET /a/x HTTP/1.1\r\nHost: main.test\r\nX-Bad: a\x00b\r\n\r\n",
        [400],
    ),
    C("huge-headers-61KiB", R("GET", "/a/huge", _huge_headers(61 * 1024)), [431]),
    C(
        "bad-chunk-size",
        b"POST /a/chunk HTTP/1.1\r\nHost: main.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        [400],
    ),
    C(
        "content-length-and-chunked",
        b"POST /a/smuggle HTTP/1.1\r\nHost: main.test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        [400],
    ),
    C(
        "conflicting-content-lengths",
        b"POST /a/cl HTTP/1.1\r\nHost: main.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        [400],
    ),
    # Envoy 1.40 refuses a repeated content-length even with the same value (issue 7).
    C(
        "duplicate-content-length-same",
        b"POST /a/cl HTTP/1.1\r\nHost: main.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        [400],
    ),
    C(
        "content-length-list-same",
        b"POST /a/cl HTTP/1.1\r\nHost: main.test\r\nContent-Length: 3, 3\r\n\r\nabc",
        [400],
    ),
    C(
        "content-length-list-differ",
        b"POST /a/cl HTTP/1.1\r\nHost: main.test\r\nContent-Length: 3, 4\r\n\r\nabcd",
        [400],
    ),
    C(
        "negative-content-length",
        b"POST /a/cl HTTP/1.1\r\nHost: main.test\r\nContent-Length: -1\r\n\r\n",
        [400],
    ),
    C("missing-host", R("GET", "/a/nohost", host=None), [400]),
    C(
        "transfer-encoding-not-chunked",
        b"POST /a/te HTTP/1.1\r\nHost: main.test\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        [501],
    ),
    C("request-line-70KiB", R("GET", "/a/" + "x" * 70 * 1024), [431]),
    C("invalid-method-token", b"G@T /a/x HTTP/1.1\r\nHost: main.test\r\n\r\n", [400]),
    # Envoy 1.40's parser is lenient here: bare LF line ends and obs-fold are accepted.
    C("bare-lf-line-endings", b"GET /a/lf HTTP/1.1\nHost: main.test\n\n", [200]),
    C("obs-fold-header", b"GET /a/x HTTP/1.1\r\nHost: main.test\r\nX-Fold: a\r\n b\r\n\r\n", [200]),
    C(
        "body-shorter-than-content-length-then-close",
        b"POST /a/short HTTP/1.1\r\nHost: main.test\r\nContent-Length: 100\r\n\r\nonly-this",
        [None],
        probe=False,
        shut_wr=True,
    ),
    # Envoy's default max_headers_count is 100: Host plus 100 is one too many.
    C(
        "many-small-headers-101",
        R("GET", "/a/many", [(f"x-h{i}", str(i)) for i in range(100)]),
        [431],
    ),
]


def _observe_alive(dep, case: Case):
    """Observe a case; a proxy that dies on it (or is already dead) fails the test by name."""
    proc = dep.proxy.proc
    assert proc.poll() is None, (
        f"{dep.name} is not running (exit {proc.returncode}):\n{dep.proxy.log_text()}"
    )
    try:
        obs = observe(dep, case)
    except OSError as e:
        pytest.fail(f"{dep.name}: {e!r} on {case.id}\n{dep.proxy.log_text()}")
    assert proc.poll() is None, f"{dep.name} died on {case.id}:\n{dep.proxy.log_text()}"
    return obs


@pytest.mark.envoy
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_same_as_envoy(case: Case, envoy_dep, candidate_dep) -> None:
    want = _observe_alive(envoy_dep, case)
    assert want.statuses() == case.expect, (
        f"Envoy answered {want.statuses()} (expected {case.expect}): the case itself is wrong\n"
        + pprint.pformat(want)
    )
    got = _observe_alive(candidate_dep, case)
    assert got == want, (
        f"{candidate_dep.name} diverges from Envoy on {case.id}\n--- Envoy:\n{pprint.pformat(want)}"
        f"\n--- {candidate_dep.name}:\n{pprint.pformat(got)}"
    )


# Each runs in its own deployment (harness.FEATURES: extra routes, clusters or HCM fields), so
# a proxy that rejects the feature at start-up fails that test by name and nothing else.
FEATURE_CASES: list[tuple[str, Case]] = [
    (
        "request_timeout",
        C(
            "hcm-request-timeout-slow-body",
            b"POST /a/slow-body HTTP/1.1\r\nHost: main.test\r\nContent-Length: 100\r\n\r\n"
            b"only-ten-b",
            [408],
        ),
    ),
    (
        "stream_idle_timeout",
        C(
            "hcm-stream-idle-timeout-slow-upstream",
            R("GET", "/a/idle", [("x-upstream-action", "delay=1500")]),
            [504],
        ),
    ),
    ("fault_abort", C("http-fault-abort-100", R("GET", "/a/fault"), [418])),
    (
        "fault_abort",
        C("http-fault-abort-pipelined", R("GET", "/a/f1") + R("GET", "/a/f2"), [418, 418]),
    ),
    (
        "fault_abort",
        C(
            "http-fault-abort-pipelined-flood",
            R("GET", "/a/f1") + R("GET", "/a/f2") + R("GET", "/a/f3"),
            [418, 418, None],
        ),
    ),
    (
        "ring_hash",
        C(
            "lb-ring-hash-same-key",
            R("GET", "/hash", [("x-user", "alice")]),
            [200] * 40,
            kind="sequence",
        ),
    ),
    (
        "host_rewrite_header",
        C(
            "route-host-rewrite-header",
            R("GET", "/hrh", [("x-target-host", "target.internal")]),
            [200],
        ),
    ),
    ("local_reply_config", C("hcm-local-reply-mapper-404", R("GET", "/nowhere"), [410])),
    (
        "access_log",
        C(
            "access-log-200",
            R("POST", "/a/log?q=1", [("User-Agent", "diff/1")], b"12345"),
            [200],
            access_log_lines=1,
        ),
    ),
    (
        "access_log",
        C(
            "access-log-404-no-route",
            R("GET", "/nowhere", [("User-Agent", "diff/1")]),
            [404],
            access_log_lines=1,
        ),
    ),
    (
        "access_log",
        C(
            "access-log-503-dead",
            R("GET", "/dead", [("User-Agent", "diff/1")]),
            [503],
            access_log_lines=1,
        ),
    ),
    ("access_log", C("access-log-400-bad-request", b"HELLO\r\n\r\n", [400], access_log_lines=1)),
    (
        "access_log",
        C(
            "access-log-pipelined-flood",
            R("GET", "/nowhere") + R("GET", "/nowhere/2") + R("GET", "/a/f3"),
            [404, 404, None],
            access_log_lines=3,
        ),
    ),
    (
        "access_log",
        C(
            "access-log-400-duplicate-content-length",
            b"POST /a/cl HTTP/1.1\r\nHost: main.test\r\nContent-Length: 3\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            [400],
            access_log_lines=1,
        ),
    ),
    (
        "access_log",
        C(
            "access-log-502-upstream-length-and-chunked",
            R("GET", "/a/desync", [("x-upstream-action", "cl-and-chunked")]),
            [502],
            access_log_lines=1,
        ),
    ),
    (
        "local_ratelimit_listener_bucket_2",
        C(
            "local-ratelimit-bucket-2",
            R("GET", "/a/l1") + R("GET", "/a/l2") + R("GET", "/a/l3"),
            [200, 200, 429],
            probe=False,
        ),
    ),
    (
        "local_ratelimit_per_route_bucket_1",
        C(
            "local-ratelimit-per-route",
            R("GET", "/limited/1") + R("GET", "/limited/2") + R("GET", "/a/free"),
            [200, 429, None],
        ),
    ),
    (
        "local_ratelimit_per_route_bucket_1",
        C(
            "local-ratelimit-429-then-pipelined",
            [R("GET", "/limited/1"), R("GET", "/limited/2") + R("GET", "/a/free")],
            [200, 429, None],
        ),
    ),
    (
        "local_ratelimit_per_route_bucket_1",
        C(
            "local-ratelimit-429-first-then-pipelined",
            R("GET", "/limited/1", [("x-upstream-action", "chunked")])
            + R("GET", "/limited/2")
            + R("GET", "/a/free"),
            [200, 429, 200],
        ),
    ),
    ("regex_rewrite", C("route-regex-rewrite", R("GET", "/regex-rewrite/abc/42"), [200])),
    ("round_robin_2_endpoints", C("lb-round-robin", R("GET", "/rr"), [200] * 40, kind="sequence")),
    (
        "weighted_endpoints_3_1",
        C("lb-weighted-endpoints-3-1", R("GET", "/wrr"), [200] * 40, kind="sequence"),
    ),
    ("strict_dns_localhost", C("cluster-strict-dns", R("GET", "/dns/x"), [200])),
    (
        "circuit_breaker_max_requests_1",
        C(
            "circuit-breaker-max-requests",
            [R("GET", "/cb/1", [("x-upstream-action", "delay=800")]), R("GET", "/cb/2")],
            [503, 200],
            kind="concurrent",
        ),
    ),
    (
        "retry_on_reset",
        C(
            "retry-on-reset",
            R("GET", "/retry-reset", [("x-case-id", "rr1"), ("x-upstream-action", "close-early")]),
            [503],
        ),
    ),
    (
        "retry_on_gateway_error",
        C(
            "retry-on-gateway-error",
            R(
                "POST",
                "/retry-gw",
                [("x-case-id", "rg1"), ("x-upstream-action", "status=502")],
                b"body-sent-twice",
            ),
            [502],
        ),
    ),
    # A loopback peer: Envoy appends the host's own address (not 127.0.0.1) to
    # x-forwarded-for and sets x-envoy-external-address: 127.0.0.1.
    ("use_remote_address", C("hcm-use-remote-address", R("GET", "/a/ura"), [200])),
    (
        "use_remote_address",
        C(
            "hcm-use-remote-address-client-xff",
            R("GET", "/a/ura", [("X-Forwarded-For", "203.0.113.7")]),
            [200],
        ),
    ),
    ("via_header", C("hcm-via", R("GET", "/a/via"), [200])),
    ("no_request_id", C("hcm-generate-request-id-false", R("GET", "/a/noid"), [200])),
    (
        "max_request_headers_kb_8",
        C("hcm-max-request-headers-kb-8", R("GET", "/a/h8", _huge_headers(9 * 1024)), [431]),
    ),
    (
        "max_headers_count_10",
        C(
            "hcm-max-headers-count-10",
            R("GET", "/a/h10", [(f"x-h{i}", "v") for i in range(10)]),
            [431],
        ),
    ),
    ("accept_http_10", C("hcm-accept-http-10", R("GET", "/a/old", version="HTTP/1.0"), [200])),
    ("normalize_path_merge_slashes", C("hcm-normalize-path", R("GET", "/x/../a//b/%2e/c"), [200])),
    (
        "strip_any_host_port",
        C("hcm-strip-any-host-port", R("GET", "/a/p", host=f"{HOST}:8080"), [200]),
    ),
    ("server_name", C("hcm-server-name", R("GET", "/a/sn"), [200])),
    ("server_header_pass_through", C("hcm-server-header-pass-through", R("GET", "/a/pt"), [200])),
    ("request_id_in_response", C("hcm-request-id-in-response", R("GET", "/a/rid"), [200])),
    (
        "retriable_status_codes",
        C(
            "retry-retriable-status-codes",
            R("GET", "/retry-418", [("x-case-id", "r418"), ("x-upstream-action", "status=418")]),
            [418],
        ),
    ),
    (
        "per_try_timeout",
        C(
            "retry-per-try-timeout",
            R("GET", "/per-try", [("x-case-id", "pt1"), ("x-upstream-action", "delay=700")]),
            [504],
        ),
    ),
    (
        "header_formatters",
        C("route-header-formatters", R("GET", "/fmt", [("User-Agent", "fmt/1")]), [200]),
    ),
    # RBAC (envoy.filters.http.rbac): ALLOW policies by method, path, headers and addresses
    ("rbac_allow", C("rbac-allow-get-public", R("GET", "/a/public/x"), [200])),
    ("rbac_allow", C("rbac-deny-post-public", R("POST", "/a/public/x", body=b"no"), [403])),
    (
        "rbac_allow",
        C("rbac-allow-admin-header", R("POST", "/a/any", [("x-role", "admin")], b"1"), [200]),
    ),
    ("rbac_allow", C("rbac-deny-no-policy", R("GET", "/a/private"), [403])),
    ("rbac_allow", C("rbac-deny-before-routing", R("GET", "/nowhere"), [403])),
    (
        "rbac_allow",
        C("rbac-allow-then-no-route", R("GET", "/nowhere", [("x-role", "admin")]), [404]),
    ),
    (
        "rbac_allow",
        C(
            "rbac-remote-ip-from-xff",
            R("GET", "/a/xff", [("X-Forwarded-For", "192.0.2.1, 10.1.2.3")]),
            [200],
        ),
    ),
    (
        "rbac_allow",
        C(
            "rbac-remote-ip-xff-last-entry-only",
            R("GET", "/a/xff", [("X-Forwarded-For", "10.1.2.3, 192.0.2.1")]),
            [403],
        ),
    ),
    ("rbac_allow", C("rbac-remote-ip-without-xff", R("GET", "/a/xff"), [403])),
    ("rbac_allow", C("rbac-method-put-not-id", R("PUT", "/a/put", body=b"x"), [200])),
    (
        "rbac_allow",
        C("rbac-authority-destination-port-ip", R("GET", "/a/port", host="port.test"), [404]),
    ),
    ("rbac_allow", C("rbac-path-header-with-query", R("GET", "/a/q?x=1"), [200])),
    ("rbac_allow", C("rbac-url-path-ignores-query", R("GET", "/a/public?x=1"), [200])),
    ("rbac_allow", C("rbac-not-rule", R("GET", "/b/x", [("x-not", "1")]), [404])),
    (
        "rbac_allow",
        C("rbac-denied-keeps-connection", R("POST", "/a/private", body=b"12345"), [403]),
    ),
    (
        "rbac_allow",
        C(
            "rbac-denied-then-pipelined",
            R("GET", "/a/private") + R("GET", "/a/public/x"),
            [403, 200],
        ),
    ),
    (
        "rbac_allow",
        C(
            "rbac-allowed-denied-then-pipelined",
            R("GET", "/a/public/1") + R("GET", "/a/private") + R("GET", "/a/public/3"),
            [200, 403, None],
        ),
    ),
    (
        "rbac_allow",
        C(
            "rbac-denied-post-then-pipelined",
            R("POST", "/a/private", body=b"12345") + R("GET", "/a/public/x"),
            [403, None],
        ),
    ),
    ("rbac_deny_shadow", C("rbac-deny-path", R("GET", "/a/blocked/1"), [403], access_log_lines=1)),
    (
        "rbac_deny_shadow",
        C(
            "rbac-deny-user-agent",
            R("GET", "/a/ok", [("User-Agent", "badbot/1")]),
            [403],
            access_log_lines=1,
        ),
    ),
    (
        "rbac_deny_shadow",
        C(
            "rbac-deny-shadow-allowed",
            R("GET", "/a/ok", [("x-shadow-ok", "1")]),
            [200],
            access_log_lines=1,
        ),
    ),
    (
        "rbac_deny_shadow",
        C("rbac-deny-shadow-denied", R("GET", "/a/ok"), [200], access_log_lines=1),
    ),
    ("rbac_log", C("rbac-log-action-allows", R("GET", "/a/logged"), [200])),
    ("rbac_per_route", C("rbac-per-route-off", R("GET", "/rbac-off/x"), [200])),
    ("rbac_per_route", C("rbac-per-route-replaced-allows", R("GET", "/rbac-route/x"), [200])),
    (
        "rbac_per_route",
        C(
            "rbac-per-route-replaced-denies",
            R("GET", "/rbac-route/x", [("x-deny", "1"), ("x-role", "admin")]),
            [403],
        ),
    ),
    ("rbac_per_route", C("rbac-per-route-filter-rules", R("GET", "/a/x"), [403])),
    (
        "rbac_per_route",
        C("rbac-per-route-filter-rules-admin", R("GET", "/a/x", [("x-role", "admin")]), [200]),
    ),
    # trailers both ways: the HCM's enable_trailers and the cluster's (HttpProtocolOptions)
    ("trailers_enabled", C("trailers-request-forwarded", _chunked_with_trailer("/tr/x"), [200])),
    (
        "trailers_enabled",
        C("trailers-request-dropped-by-cluster", _chunked_with_trailer("/a/x"), [200]),
    ),
    (
        "trailers_enabled",
        C(
            "trailers-request-cluster-options-without-trailers",
            _chunked_with_trailer("/tr-off/x"),
            [200],
        ),
    ),
    (
        "trailers_enabled",
        C(
            "trailers-response-forwarded",
            R("GET", "/tr/x", [("x-upstream-action", "trailers")]),
            [200],
        ),
    ),
    (
        "trailers_enabled",
        C(
            "trailers-response-dropped-by-cluster",
            R("GET", "/a/x", [("x-upstream-action", "trailers")]),
            [200],
        ),
    ),
    (
        "trailers_enabled",
        C(
            "trailers-response-head-request",
            R("HEAD", "/tr/x", [("x-upstream-action", "trailers")]),
            [200],
            methods=["HEAD"],
        ),
    ),
    (
        "trailers_enabled",
        C(
            "trailers-request-retried",
            _chunked_with_trailer(
                "/tr-retry/x", [("x-case-id", "tr1"), ("x-upstream-action", "fail=1")]
            ),
            [200],
        ),
    ),
    (
        "trailers_enabled",
        C(
            "trailers-request-mirrored",
            _chunked_with_trailer("/tr-mirror/x"),
            [200],
            upstream_requests=2,
            unordered_upstream=True,
        ),
    ),
    (
        "trailers_enabled",
        C(
            "trailers-request-mirror-cluster-without",
            _chunked_with_trailer("/tr-mirror-plain/x"),
            [200],
            upstream_requests=2,
            unordered_upstream=True,
        ),
    ),
    (
        "trailers_enabled",
        C(
            "trailers-request-then-pipelined",
            _chunked_with_trailer("/tr/1") + R("GET", "/tr/2"),
            [200, 200],
        ),
    ),
    (
        "trailers_enabled",
        C(
            "trailers-request-split-writes",
            [
                (
                    b"POST /tr/s HTTP/1.1\r\nHost: main.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\nx-a: 1\r\n"
                ),
                b"x-b: 2\r\n\r\n",
            ],
            [200],
        ),
    ),
    (
        "trailers_cluster_only",
        C("trailers-cluster-only-request", _chunked_with_trailer("/tr/x"), [200]),
    ),
    (
        "trailers_cluster_only",
        C(
            "trailers-cluster-only-response",
            R("GET", "/tr/x", [("x-upstream-action", "trailers")]),
            [200],
        ),
    ),
    ("direct_response_status", C("direct-response-204", R("GET", "/d204"), [204])),
    ("direct_response_status", C("direct-response-304-location", R("GET", "/d304/x?q=1"), [304])),
    ("direct_response_status", C("direct-response-200-empty", R("GET", "/d200"), [200])),
    (
        "direct_response_status",
        C("head-direct-response-200-empty", R("HEAD", "/d200"), [200], methods=["HEAD"]),
    ),
    (
        "direct_response_status",
        C("head-direct-response-204", R("HEAD", "/d204"), [204], methods=["HEAD"]),
    ),
    (
        "direct_response_status",
        C("head-direct-response-with-body", R("HEAD", "/body200"), [200], methods=["HEAD"]),
    ),
    (
        "direct_response_status",
        C("head-no-route-404", R("HEAD", "/nowhere"), [404], methods=["HEAD"]),
    ),
    (
        "request_mirror",
        C(
            "route-request-mirror",
            R("POST", "/mirror", body=b"mirrored"),
            [200],
            upstream_requests=2,
            unordered_upstream=True,
        ),
    ),
]


@pytest.mark.envoy
@pytest.mark.parametrize(("feature", "case"), FEATURE_CASES, ids=[c.id for _, c in FEATURE_CASES])
def test_feature_same_as_envoy(feature: str, case: Case, feature_pair) -> None:
    envoy_dep, candidate_dep = feature_pair(FEATURES[feature])
    test_same_as_envoy(case, envoy_dep, candidate_dep)
