"""HTTP/1.1 proxying through a real upstream: keep-alive, framing, Envoy's headers and stats."""

from __future__ import annotations

import asyncio
import re

from .conftest import bootstrap, cluster, route, vhost


async def test_keep_alive_get_reuses_one_upstream_connection(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    for i in range(3):
        r = await c.request(path=f"/item/{i}?q=1", headers={"user-agent": "t"})
        assert r.status == 200
        assert r.json()["path"] == f"/item/{i}?q=1"
        assert r.header("server") == "envoy"
        assert r.header("date")
        assert r.header("x-envoy-upstream-service-time") is not None
        assert r.upstream_header("host") == "example.com"
        assert r.upstream_header("x-forwarded-proto") == "http"
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
            r.upstream_header("x-request-id"),
        )
        assert r.upstream_header("x-envoy-expected-rq-timeout-ms") == "15000"
    await c.close()
    assert up.connections == 1
    assert p.counter("http.ingress.downstream_rq_total") == 3
    assert p.counter("http.ingress.downstream_rq_2xx") == 3
    assert p.counter("cluster.up.upstream_rq_total") == 3
    assert p.counter("cluster.up.upstream_rq_200") == 3
    assert p.counter("cluster.up.upstream_cx_total") == 1
    assert p.gauge("cluster.up.upstream_cx_active") == 1
    await asyncio.sleep(0.05)
    assert p.gauge("http.ingress.downstream_cx_active") == 0
    assert p.counter("http.ingress.downstream_cx_total") == 1


async def test_existing_request_id_and_hop_by_hop_headers(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request(
        headers={
            "x-request-id": "abc",
            "connection": "keep-alive, x-hop",
            "keep-alive": "timeout=5",
            "proxy-connection": "x",
            "te": "gzip",
            "x-hop": "1",
            "x-custom": "v",
            "x-envoy-retry-on": "5xx",
            "x-envoy-upstream-rq-timeout-ms": "10",
        }
    )
    names = [k for k, _ in r.json()["headers"]]
    assert r.upstream_header("x-request-id") == "abc"
    assert r.upstream_header("x-custom") == "v"
    # hop-by-hop, Connection-nominated and Envoy's router control headers stop here
    for hop in (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "x-hop",
        "x-envoy-retry-on",
        "x-envoy-upstream-rq-timeout-ms",
    ):
        assert hop not in names
    r = await c.request(headers={"te": "trailers"})  # the one TE Envoy forwards
    assert r.upstream_header("te") == "trailers"
    await c.close()


async def test_pipelined_requests_answer_in_order(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    await c.send(
        b"".join(b"GET /p/%d HTTP/1.1\r\nhost: a\r\n\r\n" % i for i in range(5))
        + b"POST /p/5 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc"
    )
    for i in range(6):
        r = await c.response()
        assert r.status == 200
        assert r.json()["path"] == f"/p/{i}"
    assert r.json()["body_length"] == 3
    await c.close()


async def test_request_bodies_content_length_and_chunked(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request("POST", "/sink", body=b"x" * 100000)
    assert r.body == b"100000"
    await c.send(
        b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ntrailer: 1\r\n\r\n"
    )
    r = await c.response()
    assert r.json()["body_length"] == 11
    assert r.upstream_header("transfer-encoding") == "chunked"
    # split at every byte: framing state survives arbitrary reads
    raw = (
        b"POST /sink HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    for b in raw:
        c.writer.write(bytes([b]))
        await c.writer.drain()
        await asyncio.sleep(0)
    r = await c.response()
    assert r.body == b"3"
    await c.close()


async def test_response_framings(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request(path="/chunked/3")
    assert r.header("transfer-encoding") == "chunked"
    assert r.body == b"chunk-0;chunk-1;chunk-2;"
    # a body delimited by the upstream closing is re-framed as chunked for HTTP/1.1
    r = await c.request(path="/eof")
    assert r.header("transfer-encoding") == "chunked"
    assert r.body == b"body until eof"
    r = await c.request("HEAD", "/head")
    assert r.status == 200 and r.body == b"" and int(r.header("content-length")) > 0
    r = await c.request(path="/status/204")
    assert r.status == 204 and r.body == b""
    r = await c.request(path="/after")
    assert r.status == 200 and r.json()["path"] == "/after"
    await c.close()


async def test_expect_100_continue(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    await c.send(
        b"POST /sink HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n"
    )
    interim = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 2)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await c.send(b"body")
    r = await c.response()
    assert r.status == 200 and r.body == b"4"
    await c.close()


async def test_connection_close_and_http10(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request(headers={"connection": "close"})
    assert r.status == 200 and r.header("connection") == "close"
    assert await c.closed()
    c = await p.client()
    await c.send(b"GET / HTTP/1.0\r\n\r\n")
    r = await c.response()
    assert r.status == 426 and r.body == b"Upgrade Required"
    assert await c.closed()


async def test_x_forwarded_for_with_use_remote_address(upstreams, proxy):
    from sofamesh.filters.network.http_connection_manager import local_ip as _local_ip

    up = await upstreams()
    p = await proxy(
        bootstrap([vhost([route("/")])], [cluster("up", [up.port])], use_remote_address=True)
    )
    me = _local_ip()  # Envoy appends its own address, not 127.0.0.1, for a loopback peer
    c = await p.client()
    r = await c.request(headers={"x-request-id": "client-chosen"})
    assert r.upstream_header("x-forwarded-for") == me
    assert r.upstream_header("x-envoy-external-address") == "127.0.0.1"
    assert r.upstream_header("x-request-id") != "client-chosen"  # edge: regenerated
    r = await c.request(headers={"x-forwarded-for": "10.0.0.1"})
    assert r.upstream_header("x-forwarded-for") == f"10.0.0.1,{me}"
    await c.close()
    # without use_remote_address the header passes untouched and is not added
    p2 = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p2.client()
    r = await c.request()
    assert r.upstream_header("x-forwarded-for") is None
    r = await c.request(headers={"x-forwarded-for": "10.0.0.1"})
    assert r.upstream_header("x-forwarded-for") == "10.0.0.1"
    await c.close()


async def test_websocket_upgrade_is_tunnelled_only_when_enabled(upstreams, proxy):
    up = await upstreams()
    p = await proxy(
        bootstrap(
            [vhost([route("/")])],
            [cluster("up", [up.port])],
            upgrade_configs=[{"upgrade_type": "websocket"}],
        )
    )
    c = await p.client()
    await c.send(
        b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"sec-websocket-version: 13\r\n\r\n"
    )
    r = await c.response()
    assert r.status == 101 and r.header("upgrade") == "websocket"
    await c.send(b"\x81\x05hello")
    assert await asyncio.wait_for(c.reader.readexactly(7), 2) == b"\x81\x05hello"
    await c.close()
    await asyncio.sleep(0.05)
    assert p.counter("http.ingress.downstream_cx_upgrades_total") == 1
    p2 = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p2.client()
    await c.send(
        b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    )
    r = await c.response()
    assert r.status == 403
    assert p2.counter("http.ingress.downstream_rq_ws_on_non_ws_route") == 1
    await c.close()


async def test_deep_pipeline_with_a_small_buffer_limit_pauses_and_resumes(upstreams, proxy):
    up = await upstreams()
    bs = bootstrap([vhost([route("/")])], [cluster("up", [up.port])])
    bs.static_resources.listeners[0].per_connection_buffer_limit_bytes.value = 1024
    p = await proxy(bs)
    c = await p.client()
    n = 300
    c.writer.write(b"".join(b"GET /slow/1?i=%d HTTP/1.1\r\nhost: a\r\n\r\n" % i for i in range(n)))
    for i in range(n):
        r = await c.response()
        assert r.status == 200 and r.body == b"slow"
    assert [x["path"] for x in up.requests] == [f"/slow/1?i={i}" for i in range(n)]
    assert (await c.request()).status == 200
    await c.close()


async def test_hcm_header_options(upstreams, proxy):
    up = await upstreams()
    p = await proxy(
        bootstrap(
            [vhost([route("/")])],
            [cluster("up", [up.port])],
            server_header_transformation="PASS_THROUGH",
            always_set_request_id_in_response=True,
            via="sofamesh-test",
            use_remote_address=True,
            skip_xff_append=True,
            preserve_external_request_id=True,
        )
    )
    c = await p.client()
    r = await c.request(path="/status/200", headers={"x-request-id": "rid-7"})
    assert r.header("server") == "test-upstream"  # PASS_THROUGH keeps the upstream's
    assert r.header("x-request-id") == "rid-7"
    assert r.header("via") == "sofamesh-test"
    r = await c.request(headers={"x-forwarded-for": "10.1.1.1"})
    assert r.upstream_header("via") == "sofamesh-test"
    assert r.upstream_header("x-forwarded-for") == "10.1.1.1"  # not appended
    assert r.upstream_header("x-request-id") == r.header("x-request-id")  # generated one
    await c.close()
    p2 = await proxy(
        bootstrap(
            [vhost([route("/")])],
            [cluster("up", [up.port])],
            server_header_transformation="APPEND_IF_ABSENT",
        )
    )
    c = await p2.client()
    assert (await c.request(path="/status/200")).header("server") == "test-upstream"
    r = await c.request(path="/eof")  # the upstream sends no server header here
    assert r.header("server") == "envoy"
    await c.close()
