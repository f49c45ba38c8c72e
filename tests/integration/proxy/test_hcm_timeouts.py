"""HCM request_timeout and stream_idle_timeout (compared with real Envoy by the differential
cases hcm-request-timeout-slow-body and hcm-stream-idle-timeout-slow-upstream)."""

from __future__ import annotations

import asyncio

from .conftest import bootstrap, cluster, route, vhost


async def test_request_timeout_answers_408_to_a_slow_body(upstreams, proxy):
    up = await upstreams("up")
    p = await proxy(
        bootstrap([vhost([route("/", "up")])], [cluster("up", [up.port])], request_timeout="0.3s")
    )
    c = await p.client()
    await c.send(b"POST /sink HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n0123456789")
    r = await c.response(timeout=3)
    assert (r.status, r.body, r.header("connection")) == (408, b"request timeout", "close")
    assert await c.closed()
    assert p.counter("http.ingress.downstream_rq_timeout") == 1
    assert p.gauge("cluster.up.upstream_rq_active") == 0
    # a request that arrives in time is not affected, on a fresh connection
    c2 = await p.client()
    assert (await c2.request("POST", "/sink", body=b"x" * 10)).status == 200
    await asyncio.sleep(0.4)  # the timer of a finished request never fires
    assert (await c2.request("GET", "/a")).status == 200
    assert p.counter("http.ingress.downstream_rq_timeout") == 1
    await c2.close()


async def test_stream_idle_timeout(upstreams, proxy):
    up = await upstreams("up")
    p = await proxy(
        bootstrap(
            [vhost([route("/", "up")])], [cluster("up", [up.port])], stream_idle_timeout="0.3s"
        )
    )
    c = await p.client()
    r = await c.request("GET", "/slow/1000")  # the upstream is silent for a second
    assert (r.status, r.body) == (504, b"stream timeout")
    assert p.counter("http.ingress.downstream_rq_idle_timeout") == 1
    assert p.gauge("cluster.up.upstream_rq_active") == 0
    # a body trickling in faster than the idle timeout keeps the stream alive
    c2 = await p.client()
    await c2.send(b"POST /sink HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\n")
    for b in b"abcde":
        await asyncio.sleep(0.15)
        await c2.send(bytes([b]))
    r = await c2.response(timeout=3)
    assert (r.status, r.body) == (200, b"5")
    assert p.counter("http.ingress.downstream_rq_idle_timeout") == 1
    await c.close()
    await c2.close()
