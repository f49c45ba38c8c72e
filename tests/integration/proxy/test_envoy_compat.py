"""Envoy 1.40 behaviours a drop-in must keep (each found by the differential suite against
real Envoy, tests/integration/differential); checked here against a plain upstream."""

from __future__ import annotations

from .conftest import bootstrap, cluster, route, vhost


async def _proxy(upstreams, proxy, routes=None):
    up = await upstreams()
    p = await proxy(bootstrap([vhost(routes or [route("/")])], [cluster("up", [up.port])]))
    return up, p


async def test_trailers_are_dropped_both_ways(upstreams, proxy):
    up, p = await _proxy(upstreams, proxy)
    c = await p.client()
    await c.send(
        b"POST /sink HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nx-trailer: t1\r\n\r\n"
    )
    r = await c.response()
    assert r.body == b"3"
    raw = b"".join(up.raw)
    assert raw.endswith(b"3\r\nabc\r\n0\r\n\r\n") and b"x-trailer" not in raw
    await c.send(b"GET /trailers HTTP/1.1\r\nhost: a\r\n\r\n")
    await c.reader.readuntil(b"\r\n\r\n")
    tail = await c.reader.readuntil(b"0\r\n")
    assert tail.endswith(b"4\r\ndata\r\n0\r\n")
    assert await c.reader.readexactly(2) == b"\r\n"  # no trailer line
    assert (await c.request()).status == 200  # framing intact after it
    await c.close()


async def test_request_target_forms(upstreams, proxy):
    _up, p = await _proxy(upstreams, proxy, [route("/a")])
    c = await p.client()
    await c.send(b"GET http://main.test/a/abs?x=1 HTTP/1.1\r\nhost: other\r\n\r\n")
    r = await c.response()
    assert r.json()["path"] == "/a/abs?x=1" and r.upstream_header("host") == "main.test"
    await c.send(b"GET /a/lf HTTP/1.1\nhost: a\nx-lf: 1\n\n")  # bare LF line ends
    r = await c.response()
    assert r.status == 200 and r.upstream_header("x-lf") == "1"
    await c.send(b"GET /a/fold HTTP/1.1\r\nhost: a\r\nx-fold: a\r\n b\r\n\r\n")
    r = await c.response()
    assert r.upstream_header("x-fold") == "a b"  # obs-fold joined, as Envoy does
    await c.send(b"\r\nGET /a/fold2 HTTP/1.1\r\nhost: a\r\nx-fold: c\r\n d\r\n\r\n")
    r = await c.response()  # after a stray empty line too
    assert r.json()["path"] == "/a/fold2" and r.upstream_header("x-fold") == "c d"
    await c.send(b"GET /a/frag#part HTTP/1.1\r\nhost: a\r\n\r\n")
    r = await c.response()
    assert r.status == 400 and r.body == b"" and r.header("connection") == "close"


async def test_reason_phrases_are_envoys(upstreams, proxy):
    _up, p = await _proxy(upstreams, proxy)
    c = await p.client()
    r = await c.request(path="/status/418")
    assert r.raw_head.startswith(b"HTTP/1.1 418 Unknown\r\n")
    r = await c.request(path="/status/201")  # the upstream says "X"
    assert r.raw_head.startswith(b"HTTP/1.1 201 Created\r\n")
    await c.close()


async def test_body_less_requests_framing(upstreams, proxy):
    _up, p = await _proxy(upstreams, proxy)
    c = await p.client()
    assert (await c.request("OPTIONS", "/o")).upstream_header("content-length") == "0"
    assert (await c.request("POST", "/p")).upstream_header("content-length") == "0"
    assert (await c.request("GET", "/g")).upstream_header("content-length") is None
    assert (await c.request("DELETE", "/d")).upstream_header("content-length") is None
    await c.close()


async def test_rewrites_leave_original_path_and_host(upstreams, proxy):
    _up, p = await _proxy(
        upstreams,
        proxy,
        [
            route("/pre/", prefix_rewrite="/new/", host_rewrite_literal="svc"),
            {
                "match": {"prefix": "/rx/"},
                "route": {
                    "cluster": "up",
                    "regex_rewrite": {
                        "pattern": {"regex": "^/rx/([a-z]+)/(\\d+)$"},
                        "substitution": "/items/\\2/\\1",
                    },
                },
            },
        ],
    )
    c = await p.client()
    r = await c.request(path="/pre/x?q=1", host="main.test")
    assert r.json()["path"] == "/new/x?q=1"
    assert r.upstream_header("x-envoy-original-path") == "/pre/x?q=1"
    assert r.upstream_header("x-envoy-original-host") == "main.test"
    r = await c.request(path="/rx/abc/42?z=1")
    assert r.json()["path"] == "/items/42/abc?z=1"
    assert r.upstream_header("x-envoy-original-path") == "/rx/abc/42?z=1"
    await c.close()


async def test_local_reply_closes_with_unread_body_or_pipelined_requests(upstreams, proxy):
    up, p = await _proxy(upstreams, proxy, [route("/a")])
    c = await p.client()
    await c.send(b"POST /nope HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\n")
    r = await c.response()
    assert r.status == 404 and r.header("connection") == "close"
    assert await c.closed()
    c = await p.client()
    await c.send(
        b"GET /a/1 HTTP/1.1\r\nhost: a\r\n\r\nGET /b HTTP/1.1\r\nhost: a\r\n\r\n"
        b"GET /a/3 HTTP/1.1\r\nhost: a\r\n\r\n"
    )
    assert (await c.response()).status == 200
    r = await c.response()
    assert r.status == 404 and r.header("connection") is None
    assert await c.closed()  # the third request is never answered
    assert [x["path"] for x in up.requests] == ["/a/1"]


async def test_path_normalisation_host_port_stripping_and_http10(upstreams, proxy):
    up = await upstreams()
    p = await proxy(
        bootstrap(
            [vhost([route("/a/")])],
            [cluster("up", [up.port])],
            normalize_path=True,
            merge_slashes=True,
            strip_any_host_port=True,
            http_protocol_options={"accept_http_10": True},
        )
    )
    c = await p.client()
    r = await c.request(path="/x/../a//b/%2e/c%7e?q=/../", host="main.test:8080")
    assert r.status == 200
    assert r.json()["path"] == "/a/b/c~?q=/../"  # the query is left alone
    assert r.upstream_header("host") == "main.test"
    await c.send(b"GET /a/old HTTP/1.0\r\nhost: main.test\r\n\r\n")
    r = await c.response()
    assert r.raw_head.startswith(b"HTTP/1.0 200 OK\r\n") and r.header("connection") == "close"
    assert await c.closed()
