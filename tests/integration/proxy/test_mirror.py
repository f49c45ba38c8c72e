"""Route request_mirror_policies: a fire-and-forget copy of the request to a shadow cluster.
What Envoy 1.40 sends is checked against real Envoy by the differential case
`route-request-mirror`; these cover what a mirror must never do to the main request."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import free_port

from .conftest import bootstrap, cluster, route, vhost


def _mirror_route(prefix: str, *policies: dict) -> dict:
    return route(prefix, "main", request_mirror_policies=list(policies))


async def _until(pred, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


async def test_mirror_gets_a_copy_with_the_shadow_host(upstreams, proxy):
    main, shadow = await upstreams("main"), await upstreams("shadow")
    bs = bootstrap(
        [
            vhost(
                [
                    _mirror_route("/m", {"cluster": "shadow"}),
                    _mirror_route(
                        "/keep", {"cluster": "shadow", "disable_shadow_host_suffix_append": True}
                    ),
                    _mirror_route(
                        "/never",
                        {
                            "cluster": "shadow",
                            "runtime_fraction": {
                                "default_value": {"numerator": 0, "denominator": "HUNDRED"}
                            },
                        },
                    ),
                ]
            )
        ],
        [cluster("main", [main.port]), cluster("shadow", [shadow.port])],
    )
    p = await proxy(bs)
    c = await p.client()
    r = await c.request(
        "POST",
        "/m/x?q=1",
        body=b"b" * 3000,
        host="api.test:8080",
        headers={"x-forwarded-for": "10.1.2.3"},
    )
    assert r.status == 200 and r.json()["upstream"] == "main"
    assert await _until(lambda: len(shadow.requests) == 1)
    rec = shadow.requests[0]
    hdrs = dict(rec["headers"])
    assert (rec["method"], rec["path"], rec["body_length"]) == ("POST", "/m/x?q=1", 3000)
    assert hdrs["host"] == "api.test-shadow:8080"  # suffix before the port, as Envoy
    assert hdrs["x-envoy-internal"] == "true"
    assert hdrs["x-forwarded-for"].startswith("10.1.2.3,")  # this node's address appended
    assert hdrs["x-request-id"] == r.upstream_header("x-request-id")  # same request
    assert "host" in dict(main.requests[0]["headers"])
    assert dict(main.requests[0]["headers"])["host"] == "api.test:8080"
    assert await _until(lambda: p.counter("cluster.shadow.upstream_rq_200") == 1)
    assert p.counter("cluster.shadow.upstream_rq_total") == 1
    assert p.counter("cluster.main.upstream_rq_total") == 1

    r = await c.request("GET", "/keep", host="api.test")
    assert r.status == 200
    assert await _until(lambda: len(shadow.requests) == 2)
    assert dict(shadow.requests[1]["headers"])["host"] == "api.test"

    for _ in range(5):
        assert (await c.request("GET", "/never")).status == 200
    await asyncio.sleep(0.1)
    assert len(shadow.requests) == 2 and len(main.requests) == 7
    await c.close()


async def test_dead_or_silent_mirror_never_delays_or_fails_the_main_request(upstreams, proxy):
    main = await upstreams("main")
    loop = asyncio.get_running_loop()
    heard: list = []

    class Silent(asyncio.Protocol):  # reads the request, never answers
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            heard.append(data)

    srv = await loop.create_server(Silent, "127.0.0.1", 0)
    try:
        bs = bootstrap(
            [
                vhost(
                    [
                        _mirror_route("/dead", {"cluster": "dead"}),
                        route(
                            "/silent",
                            "main",
                            timeout="0.3s",
                            request_mirror_policies=[{"cluster": "silent"}],
                        ),
                    ]
                )
            ],
            [
                cluster("main", [main.port]),
                cluster("silent", [srv.sockets[0].getsockname()[1]]),
                cluster("dead", [free_port()]),
            ],
        )
        p = await proxy(bs)
        c = await p.client()
        r = await c.request("POST", "/dead", body=b"abc")
        assert r.status == 200 and r.json()["upstream"] == "main"
        assert await _until(lambda: p.counter("cluster.dead.upstream_cx_connect_fail") == 1)
        assert p.gauge("cluster.dead.upstream_rq_active") == 0
        assert p.gauge("cluster.dead.upstream_cx_active") == 0

        t0 = time.monotonic()
        r = await c.request("POST", "/silent", body=b"hello")
        assert r.status == 200 and r.json()["upstream"] == "main"
        assert time.monotonic() - t0 < 0.25  # not held for the mirror's answer
        assert await _until(lambda: b"hello" in b"".join(heard))
        # the mirror gives up after the route timeout, as Envoy's shadow does
        assert await _until(lambda: p.counter("cluster.silent.upstream_rq_timeout") == 1)
        assert p.gauge("cluster.silent.upstream_rq_active") == 0
        assert p.counter("http.ingress.downstream_rq_5xx") == 0
        assert (await c.request("GET", "/dead/again")).status == 200
        await c.close()
    finally:
        srv.close()


async def test_a_mirror_that_cannot_keep_up_is_reset_not_buffered(upstreams, proxy):
    """A 24 MiB upload mirrored to an upstream that never reads: the main request completes,
    the mirror is dropped once more than the buffer limit waits for it."""
    main = await upstreams("main")
    loop = asyncio.get_running_loop()
    stalled: list = []

    class Stall(asyncio.Protocol):
        def connection_made(self, transport):
            stalled.append(transport)
            transport.pause_reading()

    srv = await loop.create_server(Stall, "127.0.0.1", 0)
    try:
        bs = bootstrap(
            [vhost([_mirror_route("/sink", {"cluster": "stall"})])],
            [cluster("main", [main.port]), cluster("stall", [srv.sockets[0].getsockname()[1]])],
        )
        p = await proxy(bs)
        c = await p.client()
        size = 24 * 1024 * 1024
        await c.send(b"POST /sink HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % size)
        piece = b"z" * (1024 * 1024)
        for _ in range(size // len(piece)):
            await c.send(piece)
        r = await c.response(timeout=10)
        assert r.status == 200 and r.body == str(size).encode()
        assert stalled, "the mirror connected"
        assert p.counter("cluster.stall.upstream_rq_tx_reset") == 1
        assert p.gauge("cluster.stall.upstream_rq_active") == 0
        # the stalled mirror's connection is gone, the main connection still serves
        assert (await c.request("GET", "/sink")).status == 200
        await c.close()
    finally:
        for t in stalled:
            t.abort()
        srv.close()
