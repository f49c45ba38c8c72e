"""The Server contract the admin API and CLI rely on (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio
import re

import pytest

from sofamesh._core.stats import Store
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.server import Server

from .conftest import bootstrap, cluster, route, vhost


async def test_listeners_and_clusters_are_described(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [(up.port, 5)])]))
    li = p.server.listeners[0]
    assert li.name == "l0" and li.address[0] == "127.0.0.1" and li.address[1] > 0
    assert li.config.name == "l0"
    ci = p.server.clusters["up"]
    assert ci.name == "up" and ci.config.name == "up"
    (h,) = ci.hosts
    assert (h.address, h.port, h.weight, h.healthy) == ("127.0.0.1", up.port, 5, True)
    c = await p.client()
    await c.request()
    await c.request(path="/status/500")
    assert (h.rq_total, h.rq_success, h.rq_error, h.cx_total, h.cx_active) == (2, 1, 1, 1, 1)
    await c.close()
    assert p.server.health_failed is False


async def test_graceful_drain_closes_after_the_response(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]))
    c = await p.client()
    assert (await c.request()).status == 200
    await c.send(b"GET /slow/100 HTTP/1.1\r\nhost: a\r\n\r\n")
    await asyncio.sleep(0.02)
    await p.server.drain_listeners(graceful=True)
    r = await c.response()
    assert r.status == 200 and r.header("connection") == "close"
    assert await c.closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", p.port)


async def test_stop_closes_everything(upstreams):
    up = await upstreams()
    srv = Server(bootstrap([vhost([route("/")])], [cluster("up", [up.port])]), stats=Store())
    await srv.start()
    port = srv.listeners[0].address[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    await r.readuntil(b"\r\n\r\n")
    await srv.stop()
    assert await asyncio.wait_for(r.read(), 2) is not None
    await asyncio.sleep(0.05)
    assert up.protocols == set()  # pooled upstream connections closed too
    w.close()


@pytest.mark.parametrize(
    "mutate,field",
    [
        (
            lambda b: b.static_resources.clusters[0].__setattr__("lb_policy", 5),
            "lb_policy",
        ),  # MAGLEV
        (
            lambda b: (
                b.static_resources.listeners[0]
                .filter_chains[0]
                .filters[0]
                .__setattr__("name", "envoy.filters.network.tcp_proxy")
                or b.static_resources.listeners[0]
                .filter_chains[0]
                .filters[0]
                .typed_config.__setattr__("type_url", "type.googleapis.com/x")
            ),
            "filters[0]",
        ),
    ],
)
async def test_unsupported_config_names_the_field(upstreams, mutate, field):
    up = await upstreams()
    bs = bootstrap([vhost([route("/")])], [cluster("up", [up.port])])
    mutate(bs)
    srv = Server(bs, stats=Store())
    with pytest.raises(UnsupportedConfig, match=re.escape(field)):
        await srv.start()
    await srv.stop()


async def test_route_to_unknown_cluster_is_a_config_error():
    srv = Server(bootstrap([vhost([route("/", "missing")])], []), stats=Store())
    with pytest.raises(UnsupportedConfig, match="unknown cluster 'missing'"):
        await srv.start()
    await srv.stop()


async def test_runs_on_uvloop():
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_live_route_and_endpoint_updates(upstreams, proxy):
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.route.v3 import route_pb2
    from google.protobuf import json_format

    a, b = await upstreams("a"), await upstreams("b")
    p = await proxy(
        bootstrap([vhost([route("/")])], [cluster("up", [a.port]), cluster("other", [b.port])])
    )
    c = await p.client()
    assert (await c.request()).json()["upstream"] == "a"
    rc = json_format.ParseDict(
        {"name": "rds", "virtual_hosts": [vhost([route("/", "other")])]},
        route_pb2.RouteConfiguration(),
    )
    p.server.set_route_config("l0", rc)
    assert (await c.request()).json()["upstream"] == "b"  # same connection, new table
    rc2 = json_format.ParseDict(
        {"virtual_hosts": [vhost([route("/", "gone")])]}, route_pb2.RouteConfiguration()
    )
    p.server.set_route_config("l0", rc2)
    r = await c.request()
    assert r.status == 503 and p.counter("http.ingress.no_cluster") == 1
    p.server.set_route_config("l0", rc)
    cla = json_format.ParseDict(
        {
            "cluster_name": "other",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": a.port}
                                }
                            }
                        },
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": b.port}
                                }
                            },
                            "health_status": "UNHEALTHY",
                        },
                    ]
                }
            ],
        },
        endpoint_pb2.ClusterLoadAssignment(),
    )
    p.server.set_endpoints("other", cla)
    for _ in range(3):
        assert (await c.request()).json()["upstream"] == "a"
    assert p.gauge("cluster.other.membership_total") == 2
    assert p.gauge("cluster.other.membership_healthy") == 1
    await c.close()
    with pytest.raises(KeyError):
        p.server.set_route_config("nope", rc)


async def test_network_filter_listeners_start_in_the_base_server(upstreams):
    """A tcp_proxy chain (a terminal network filter from the registry) starts next to an
    HCM listener in the one Server."""
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    up = await upstreams()
    bs = bootstrap([vhost([route("/")])], [cluster("up", [up.port])])
    tcp = bs.static_resources.listeners.add()
    tcp.CopyFrom(bs.static_resources.listeners[0])
    tcp.name = "tcp"
    f = tcp.filter_chains[0].filters[0]
    f.name = "envoy.filters.network.tcp_proxy"
    f.typed_config.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix="raw", cluster="up"))
    srv = Server(bs, stats=Store())
    await srv.start()
    try:
        assert [li.name for li in srv.listeners] == ["l0", "tcp"]
        r, w = await asyncio.open_connection("127.0.0.1", srv.listeners[1].address[1])
        w.write(b"GET /through-tcp HTTP/1.1\r\nhost: a\r\n\r\n")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"server: test-upstream" in head
        w.close()
    finally:
        await srv.stop()


@pytest.mark.parametrize(
    ("name", "type_url", "starts"),
    [
        ("istio_authn", "type.googleapis.com/io.istio.network.authn.Config", True),
        ("istio.metadata_exchange", "type.googleapis.com/x.Y", False),
        ("x.rbac", "type.googleapis.com/x.Y", False),
    ],
)
async def test_only_pass_through_filters_may_precede_the_terminal_one(
    upstreams, name, type_url, starts
):
    """Istio's network filters (recognised by config type, filters/istio.py) ahead of the
    HCM are skipped; any other filter there, whatever its name, is refused, naming it."""
    from xds.type.v3 import typed_struct_pb2

    up = await upstreams()
    bs = bootstrap([vhost([route("/")])], [cluster("up", [up.port])])
    filters = bs.static_resources.listeners[0].filter_chains[0].filters
    hcm = type(filters[0])()
    hcm.CopyFrom(filters[0])
    del filters[:]
    first = filters.add(name=name)
    first.typed_config.Pack(typed_struct_pb2.TypedStruct(type_url=type_url))
    filters.add().CopyFrom(hcm)
    srv = Server(bs, stats=Store())
    try:
        if not starts:
            with pytest.raises(UnsupportedConfig, match=rf"filters\[0\]: network filter '{name}'"):
                await srv.start()
            return
        await srv.start()
        r, w = await asyncio.open_connection("127.0.0.1", srv.listeners[0].address[1])
        w.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        w.close()
    finally:
        await srv.stop()
