"""Envoy's local replies: status codes, bodies, connection handling and the counters."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from tests.conftest import free_port

from .conftest import bootstrap, cluster, route, vhost

RESET = "upstream connect error or disconnect/reset before headers. "


async def test_no_route_is_404_and_keeps_the_connection(upstreams, proxy):
    up = await upstreams()
    p = await proxy(
        bootstrap([vhost([route("/api")], domains=["a.com"])], [cluster("up", [up.port])])
    )
    c = await p.client()
    r = await c.request(path="/other", host="a.com")
    assert r.status == 404 and r.body == b"" and r.header("content-length") == "0"
    r = await c.request(path="/api/x", host="b.com")
    assert r.status == 404
    r = await c.request(path="/api/x", host="a.com")
    assert r.status == 200
    assert p.counter("http.ingress.no_route") == 2
    assert p.counter("http.ingress.downstream_rq_4xx") == 2
    await c.close()


async def test_connect_failure_is_503_with_envoys_body(proxy):
    dead = free_port()
    p = await proxy(bootstrap([vhost([route("/", "dead")])], [cluster("dead", [dead])]))
    c = await p.client()
    r = await c.request()
    assert r.status == 503
    assert r.body.decode() == RESET + "reset reason: remote connection failure"
    assert r.header("content-type") == "text/plain"
    assert p.counter("cluster.dead.upstream_cx_connect_fail") == 1
    assert p.counter("http.ingress.downstream_rq_5xx") == 1
    # the connection stays usable
    r = await c.request()
    assert r.status == 503
    await c.close()


async def test_no_healthy_upstream(proxy):
    p = await proxy(
        bootstrap(
            [vhost([route("/", "empty")])],
            [{"name": "empty", "type": "STATIC", "load_assignment": {"cluster_name": "empty"}}],
        )
    )
    c = await p.client()
    r = await c.request()
    assert r.status == 503 and r.body == b"no healthy upstream"
    assert p.counter("cluster.empty.upstream_cx_none_healthy") == 1
    await c.close()


async def test_route_timeout_is_504(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/", timeout="0.2s")])], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request(path="/slow/1000")
    assert r.status == 504 and r.body == b"upstream request timeout"
    assert p.counter("cluster.up.upstream_rq_timeout") == 1
    r = await c.request(path="/slow/10")
    assert r.status == 200 and r.body == b"slow"
    await c.close()


async def test_upstream_reset_before_headers_is_503(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request(path="/reset")
    assert r.status == 503
    assert r.body.decode() == RESET + "reset reason: connection termination"
    r = await c.request(path="/fine")
    assert r.status == 200
    await c.close()


async def test_headers_too_large_is_431_and_close(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    await c.send(b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"a" * 70000 + b"\r\n\r\n")
    r = await c.response()
    assert r.status == 431 and r.body == b"Request Header Fields Too Large"
    assert r.header("connection") == "close"
    assert await c.closed()
    c = await p.client()
    await c.send(
        b"GET / HTTP/1.1\r\nhost: a\r\n" + b"".join(b"h%d: 1\r\n" % i for i in range(101)) + b"\r\n"
    )
    r = await c.response()
    assert r.status == 431
    assert p.counter("http.ingress.downstream_rq_header_overflow") == 2


async def test_malformed_requests_are_400_and_close(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    bad = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: x\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header: x\r\n\r\n",
        b"GET / HTTP/2.0\r\nhost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ]
    for raw in bad:
        c = await p.client()
        await c.send(raw)
        r = await c.response()
        assert r.status == 400, raw
        assert r.header("connection") == "close"
        assert await c.closed(), raw
    c = await p.client()
    await c.send(b"GET / HTTP/1.1\r\n\r\n")  # HTTP/1.1 without Host
    r = await c.response()
    assert r.status == 400 and r.body == b""
    c = await p.client()
    await c.send(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n")
    r = await c.response()
    assert r.status == 501
    assert p.counter("http.ingress.downstream_cx_protocol_error") == len(bad) + 1
    # and the proxy still serves
    c = await p.client()
    r = await c.request()
    assert r.status == 200
    await c.close()


async def test_direct_response_and_redirect(upstreams, proxy):
    p = await proxy(
        bootstrap(
            [
                vhost(
                    [
                        {
                            "match": {"path": "/health"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        },
                        {
                            "match": {"prefix": "/old"},
                            "redirect": {"prefix_rewrite": "/new", "response_code": "FOUND"},
                        },
                        {"match": {"prefix": "/secure"}, "redirect": {"https_redirect": True}},
                        {
                            "match": {"prefix": "/moved"},
                            "redirect": {"host_redirect": "b.com", "path_redirect": "/there"},
                        },
                    ]
                )
            ],
            [],
        )
    )
    c = await p.client()
    r = await c.request(path="/health")
    assert (r.status, r.body, r.header("content-type")) == (200, b"ok", "text/plain")
    r = await c.request(path="/old/x?y=1", host="a.com:8080")
    assert r.status == 302 and r.header("location") == "http://a.com:8080/new/x?y=1"
    r = await c.request(path="/secure/p", host="a.com:8080")
    assert r.status == 301 and r.header("location") == "https://a.com/secure/p"
    r = await c.request(path="/moved?q=2", host="a.com")
    assert r.status == 301 and r.header("location") == "http://b.com/there?q=2"
    assert p.counter("http.ingress.rq_direct_response") == 4  # Envoy counts redirects too
    await c.close()


async def test_client_disconnect_mid_request_is_counted(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    await c.send(b"GET /slow/300 HTTP/1.1\r\nhost: a\r\n\r\n")
    await asyncio.sleep(0.05)
    await c.close()
    await asyncio.sleep(0.05)
    assert p.counter("http.ingress.downstream_rq_rx_reset") == 1
    assert p.gauge("http.ingress.downstream_rq_active") == 0
    assert p.gauge("cluster.up.upstream_rq_active") == 0
    c = await p.client()
    assert (await c.request()).status == 200
    await c.close()


async def test_shorter_timeout_after_a_longer_one_on_the_same_connection(upstreams, proxy):
    up = await upstreams()
    p = await proxy(
        bootstrap(
            [vhost([route("/long", timeout="30s"), route("/", timeout="0.2s")])],
            [cluster("up", [up.port])],
        )
    )
    c = await p.client()
    assert (await c.request(path="/long")).status == 200  # arms a 30 s timer
    t0 = asyncio.get_running_loop().time()
    r = await c.request(path="/slow/2000")
    assert r.status == 504
    assert asyncio.get_running_loop().time() - t0 < 1.0
    await c.close()


async def test_connect_timeout_is_503_connection_timeout(proxy):
    # A listener whose accept queue is full drops SYNs: connects hang until the timeout.
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.1)
        p = await proxy(
            bootstrap(
                [vhost([route("/", "blackhole")])],
                [cluster("blackhole", [port], connect_timeout="0.3s")],
            )
        )
        c = await p.client()
        t0 = asyncio.get_running_loop().time()
        r = await c.request()
        assert r.status == 503
        assert r.body.decode() == RESET + "reset reason: connection timeout"
        assert 0.25 < asyncio.get_running_loop().time() - t0 < 2
        assert p.counter("cluster.blackhole.upstream_cx_connect_timeout") == 1
        assert p.counter("cluster.blackhole.upstream_cx_connect_fail") == 1
        await c.close()
    finally:
        for s in fillers:
            s.close()
        ls.close()


async def test_idle_connections_close_after_idle_timeout(upstreams, proxy):
    """A connection that never sent a byte, or a head never ended, closes at the idle
    timeout; one idle after its requests goes through Envoy's drain first (drain_timeout,
    then the 1 s delayed close)."""
    up = await upstreams()
    p = await proxy(
        bootstrap(
            [vhost([route("/", timeout="0s")])],
            [cluster("up", [up.port])],
            common_http_protocol_options={"idle_timeout": "0.3s"},
            drain_timeout="0.2s",
        )
    )
    idle = await p.client()
    partial = await p.client()
    await partial.send(b"GET / HTTP/1.1\r\nhost: a\r\n")  # a head that never ends
    busy = await p.client()
    r = await busy.request(path="/slow/500")  # a request in flight is not idle
    assert r.status == 200
    assert (await busy.request()).status == 200
    assert await idle.closed(2) and await partial.closed(2)
    assert await busy.closed(3)  # idle again after its requests: 0.3 + 0.2 + 1 s
    assert p.counter("http.ingress.downstream_cx_idle_timeout") == 3
