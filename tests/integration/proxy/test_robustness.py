"""Nothing a client or an upstream sends crashes or wedges the proxy; each bad event counts."""

from __future__ import annotations

import asyncio
import logging
import random

from .conftest import bootstrap, cluster, route, vhost

VALID = [
    b"GET /a?b=c HTTP/1.1\r\nhost: x\r\nuser-agent: t\r\n\r\n",
    b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
    b"POST /sink HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /chunked/2 HTTP/1.1\r\nhost: x\r\n\r\n",
]
JUNK = [
    b"\x00",
    b"\r\n",
    b"\n",
    b" ",
    b":",
    b"\xff",
    b"HTTP/1.1",
    b"\r\n\r\n",
    b"0\r\n",
    b"content-length: 99999999999999999999\r\n",
    b"transfer-encoding: chunked\r\n",
    b"GET",
    b"\t",
    b";",
    b"ffffffffffffffffff\r\n",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            del b[pos % len(b)]
        elif op == 1:
            b[pos:pos] = rng.choice(JUNK)
        elif op == 2 and b:
            b[pos % len(b)] = rng.randrange(256)
        else:
            b = b[:pos]
    return bytes(b)


async def _exchange(port: int, payload: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(payload)
        await w.drain()
        w.write_eof()
        out = b""
        while True:
            chunk = await asyncio.wait_for(r.read(65536), 2)
            if not chunk:
                return out
            out += chunk
    except (TimeoutError, ConnectionError):
        return b""
    finally:
        w.close()


async def test_mutated_requests_never_break_the_proxy(upstreams, proxy, caplog):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/", timeout="1s")])], [cluster("up", [up.port])]))
    rng = random.Random(1234)
    caplog.set_level(logging.ERROR, logger="sofamesh")
    for i in range(400):
        payload = mutate(rng, rng.choice(VALID))
        out = await _exchange(p.port, payload)
        assert out == b"" or out.startswith(b"HTTP/1.1 "), (payload, out[:80])
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    assert p.counter("http.ingress.downstream_cx_protocol_error") > 0
    await asyncio.sleep(0.1)
    assert p.gauge("http.ingress.downstream_rq_active") == 0
    assert p.gauge("http.ingress.downstream_cx_active") == 0
    c = await p.client()
    assert (await c.request()).status == 200
    await c.close()


class BadUpstream(asyncio.Protocol):
    def __init__(self, reply: bytes):
        self.reply = reply

    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        self.t.write(self.reply)
        if b"close" in self.reply:
            self.t.close()


async def test_bad_upstream_responses_become_502_or_reset(proxy):
    loop = asyncio.get_running_loop()
    replies = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort close",
        b"HTTP/1.1 200 OK\r\nx: " + b"a" * 70000 + b"\r\n\r\n",
    ]
    for reply in replies:
        srv = await loop.create_server(lambda r=reply: BadUpstream(r), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [port])]))
        c = await p.client()
        await c.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        try:
            r = await c.response()
            status = r.status
        except (asyncio.IncompleteReadError, ConnectionError):
            status = None  # reset mid-response, as Envoy does
        # unparsable: 502 "... reset reason: protocol error" (Envoy); mid-body: reset
        assert status in (None, 502) or (status == 200 and b"content-length: 10" in reply)
        if status == 502:
            assert r.body.endswith(b"reset reason: protocol error")
            assert p.counter("cluster.up.upstream_cx_protocol_error") == 1
        srv.close()
        await c.close()
