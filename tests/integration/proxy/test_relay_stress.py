"""Responses are never lost or stalled when connections share pooled upstream connections
under backpressure (issue 7: a chunked reply that never reached its client under load)."""

from __future__ import annotations

import asyncio
import random
import socket
import time

from .conftest import bootstrap, cluster, read_response, route, vhost

LIMIT = 16384  # a small per-connection buffer so backpressure starts after a few reads


def _bootstrap(port: int):
    bs = bootstrap([vhost([route("/")])], [cluster("up", [port])])
    bs.static_resources.listeners[0].per_connection_buffer_limit_bytes.value = LIMIT
    return bs


async def _open(port: int, rcvbuf: int | None = None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    # a small StreamReader limit: it stops reading the socket at 2 x limit buffered
    return await asyncio.open_connection(sock=sock, limit=16384)


async def test_upstream_released_while_its_reading_is_paused_serves_the_next_request(
    upstreams, proxy
):
    """A's slow client pauses reading on the upstream connection (pause_writing) in the
    same read that completes A's response; that connection goes back to the pool. B's
    request reuses it: B's response must still be read and relayed."""
    up = await upstreams()
    p = await proxy(_bootstrap(up.port))
    ra, wa = await _open(p.port, rcvbuf=4096)
    # more than the kernel buffers hold: the proxy's write buffer to us passes its limit
    wa.write(b"GET /big/8000000 HTTP/1.1\r\nhost: a\r\n\r\n")
    await asyncio.sleep(0.3)
    resp = await asyncio.wait_for(read_response(ra), 5)
    assert len(resp.body) == 8000000
    rb, wb = await _open(p.port)
    wb.write(b"GET /chunked/3 HTTP/1.1\r\nhost: a\r\n\r\n")
    resp = await asyncio.wait_for(read_response(rb), 2)
    assert resp.status == 200 and resp.body == b"chunk-0;chunk-1;chunk-2;"
    assert up.connections == 1, "the test needs B to reuse A's pooled upstream connection"
    for w in (wa, wb):
        w.close()


async def _big_reader(port: int, stop: float, rng: random.Random, stats: dict) -> None:
    """Fetches large replies and reads them in bursts with pauses: backpressure on and off."""
    r, w = await _open(port, rcvbuf=rng.choice([4096, 16384, None]))
    try:
        while time.monotonic() < stop:
            # 5 MB and more outgrow what the kernel buffers (its send buffer grows to 4 MB),
            # so the proxy's own write buffer passes its limit and pauses the upstream
            size = rng.choice([300000, 5000000, 8000000])
            w.write(b"GET /big/%d HTTP/1.1\r\nhost: a\r\n\r\n" % size)
            await asyncio.sleep(rng.choice([0, 0.01, 0.05]))
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert b" 200 " in head.split(b"\r\n", 1)[0]
            left = size
            while left:
                if rng.random() < 0.3:
                    await asyncio.sleep(rng.choice([0, 0.001, 0.005]))
                got = await asyncio.wait_for(r.read(min(left, rng.choice([1024, 65536]))), 5)
                assert got, "the big reply was cut short"
                left -= len(got)
            stats["big"] += 1
    finally:
        w.close()


async def _small_exchanges(port: int, stop: float, rng: random.Random, stats: dict) -> None:
    """Chunked replies (three chunks in one upstream write) on keep-alive connections,
    sometimes pipelined three deep; every reply must arrive within a second."""
    r, w = await _open(port)
    try:
        while time.monotonic() < stop:
            depth = rng.choice([1, 1, 1, 3])
            w.write(b"GET /chunked/3 HTTP/1.1\r\nhost: a\r\n\r\n" * depth)
            for _ in range(depth):
                try:
                    resp = await asyncio.wait_for(read_response(r), 1)
                except TimeoutError:
                    stats["stalled"] += 1
                    raise AssertionError(
                        f"a chunked reply never arrived after {stats['small']} exchanges"
                    ) from None
                assert resp.body == b"chunk-0;chunk-1;chunk-2;"
                stats["small"] += 1
            if rng.random() < 0.02:  # now and then a fresh client connection
                w.close()
                r, w = await _open(port)
    finally:
        w.close()


async def test_stress_chunked_replies_beside_large_ones_under_backpressure(upstreams, proxy):
    """Thousands of small chunked exchanges while other clients pull large replies slowly,
    all through one cluster whose upstream connections are pooled and reused."""
    up = await upstreams()
    p = await proxy(_bootstrap(up.port))
    rng = random.Random(7)
    stats = {"big": 0, "small": 0, "stalled": 0}
    stop = time.monotonic() + 3.0
    async with asyncio.TaskGroup() as tg:  # the first failure cancels the rest
        for _ in range(3):
            tg.create_task(_big_reader(p.port, stop, random.Random(rng.random()), stats))
        for _ in range(4):
            tg.create_task(_small_exchanges(p.port, stop, random.Random(rng.random()), stats))
    assert stats["stalled"] == 0
    # enough traffic for the test to mean something (about 10x this on an idle machine)
    assert stats["small"] >= 500 and stats["big"] >= 5, stats
    # the pool was shared: far fewer upstream connections than exchanges
    assert up.connections < stats["small"] / 10, (up.connections, stats)
