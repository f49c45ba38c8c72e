"""Bolt through sofamesh with real peers: sofa-rpc-node (Bolt v1, v2 with CRC) and anthunder
(Bolt v1, protobuf codec) clients and servers; routing by service and by the method read
from the SofaRequest; request ids multiplexed over a small upstream pool; heartbeats,
oneway, and Bolt error replies (no route, no healthy host, timeout, reset) with the
client's request id."""

from __future__ import annotations

import threading
import time

import pytest

from sofamesh._core.codecs import bolt

from .conftest import (
    SERVICE,
    NodeServer,
    RawUpstream,
    bolt_filter,
    bootstrap,
    cluster,
    free_port,
    listener,
    node_client,
    raw_exchange,
    route_config,
    send_mutations,
    sofamesh,
    stats,
    wait_stat,
)

ANT_IFACE = "com.alipay.test.EchoService:1.0"


class _AntEcho:
    def __init__(self, ctx):
        self.ctx = ctx

    def echo(self, bs: bytes) -> bytes:
        return b"echo:" + bs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from anthunder.listener.aio_listener import AioListener

    ant = AioListener(("127.0.0.1", 0), "ant_server")
    ant.handler.register_interface(ANT_IFACE, _AntEcho)
    t = threading.Thread(target=ant.run_forever, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while ant._server is None and time.monotonic() < deadline:
            time.sleep(0.02)
        ant_port = ant._server.sockets[0].getsockname()[1]
        with (
            NodeServer(tag="s1") as s1,
            NodeServer(tag="s2") as s2,
            RawUpstream("silent") as silent,
            RawUpstream("reset") as reset,
            RawUpstream("garbage") as garbage,
        ):
            port = free_port()
            routes = [
                {
                    "name": "node",
                    "interface": SERVICE,
                    "routes": [
                        {
                            "match": {
                                "method": {"name": {"exact": "who"}},
                                "headers": [
                                    {"name": "service", "string_match": {"prefix": SERVICE}}
                                ],
                            },
                            "route": {"cluster": "node2"},
                        },
                        {"match": {}, "route": {"cluster": "node1"}},
                    ],
                },
                route_config(ANT_IFACE, "ant"),
                route_config("com.raw.Silent", "silent"),
                route_config("com.raw.Reset", "reset"),
                route_config("com.raw.Dead", "dead"),
                route_config("com.raw.Garbage", "garbage"),
            ]
            dead = free_port()
            boot = bootstrap(
                [listener("bolt", port, [bolt_filter(routes, default_timeout_ms=400)])],
                [
                    cluster("node1", [s1.port]),
                    cluster("node2", [s2.port]),
                    cluster("ant", [ant_port]),
                    cluster("silent", [silent.port]),
                    cluster("reset", [reset.port]),
                    cluster("dead", [dead]),
                    cluster("garbage", [garbage.port]),
                ],
            )
            with sofamesh(boot, tmp_path_factory.mktemp("bolt")) as proxy:
                yield {"proxy": proxy, "port": port, "silent": silent, "reset": reset}
    finally:
        ant.shutdown()
        ant._loop.call_soon_threadsafe(ant._loop.stop)
        t.join(5)


CALLS = [
    {"method": "plus", "args": [1, 2]},
    {"method": "fail", "args": ["boom"]},
    {"method": "echo", "args": ["héllo"]},
    {"method": "who"},
]


def check_results(res):
    assert res[0] == {"ok": True, "result": 3}
    assert not res[1]["ok"] and "boom" in res[1]["error"]
    assert res[2] == {"ok": True, "result": "héllo"}
    # `who` is routed by the method name read from the SofaRequest hessian content
    # (sofa-rpc-node sends only the `service` header) to the second cluster
    assert res[3] == {"ok": True, "result": "s2"}


@pytest.mark.parametrize("mode", ["bolt", "bolt2"])
def test_sofa_rpc_node_through_sofamesh(world, mode):
    res = node_client(world["port"], CALLS, mode=mode, repeat=3)
    for i in range(3):
        check_results(res[4 * i : 4 * i + 4])


def test_requests_multiplexed_over_a_small_upstream_pool(world):
    proxy = world["proxy"]
    before = stats(proxy)
    calls = [{"method": "plus", "args": [i, i]} for i in range(40)]
    results = [node_client(world["port"], calls) for _ in range(3)]
    for res in results:
        assert [r["result"] for r in res] == [2 * i for i in range(40)]
    after = stats(proxy)
    assert after["bolt.bolt_in.cx_total"] - before.get("bolt.bolt_in.cx_total", 0) >= 3
    assert (
        after["cluster.node1.upstream_rq_total"] - before.get("cluster.node1.upstream_rq_total", 0)
        == 120
    )
    # every downstream connection shares the same few upstream connections
    assert after["cluster.node1.upstream_cx_total"] <= 2
    # admin /clusters shows the RPC cluster's hosts like HTTP ones
    from tests.support.envoy import admin_get

    aport = int(proxy.bootstrap["admin"]["address"]["socket_address"]["port_value"])
    status, body = admin_get(aport, "/clusters")
    assert status == 200
    host = [ln for ln in body.splitlines() if ln.startswith("node1::127.0.0.1:")]
    counts = {ln.split("::")[2]: ln.split("::")[3] for ln in host}
    assert int(counts["rq_total"]) >= 120 and int(counts["rq_success"]) >= 120
    assert int(counts["cx_active"]) in (1, 2) and counts["rq_active"] == "0"


def test_anthunder_client_and_server_through_sofamesh(world, monkeypatch):
    from anthunder import SERVICE_MAP, Client
    from anthunder.client import base
    from mytracer import SpanContext

    class _NoMesh:  # the client would otherwise look for a mesh agent on 127.0.0.1:12220
        def __init__(self, *a, **k):
            raise RuntimeError("no mesh in tests")

    monkeypatch.setattr(base, "MeshClient", _NoMesh)
    SERVICE_MAP[ANT_IFACE] = ("127.0.0.1", world["port"])
    client = Client("ant_client")
    for word in (b"a", b"\x00\xffbinary", b"x" * 100000):
        out = client.invoke_sync(ANT_IFACE, "echo", word, spanctx=SpanContext(), timeout_ms=3000)
        assert out == b"echo:" + word


def _req(rid: int, service: str, **kw) -> bytes:
    return bolt.BoltFrame(
        request_id=rid,
        class_name=bolt.SOFA_REQUEST_CLASS,
        headers={"service": service, "sofa_head_method_name": "m"},
        content=b"\x91",
        **kw,
    ).encode()


def test_heartbeat_answered_locally(world):
    proxy = world["proxy"]
    out = raw_exchange(
        world["port"], bolt.heartbeat(4242) + bolt.heartbeat(7, proto=2), bolt.BoltDecoder(), 2
    )
    assert [(f.request_id, f.cmdcode, f.type, f.status, f.proto) for f in out] == [
        (4242, 0, 0, 0, 1),
        (7, 0, 0, 0, 2),
    ]
    assert wait_stat(proxy, "bolt.bolt_in.request_event", 2) >= 2


def test_no_route_is_a_no_processor_reply_with_the_request_id(world):
    out = raw_exchange(world["port"], _req(31337, "com.nobody.Svc:1.0"), bolt.BoltDecoder(), 1)
    assert len(out) == 1 and out[0].request_id == 31337
    assert out[0].status == bolt.STATUS_NO_PROCESSOR
    assert stats(world["proxy"])["bolt.bolt_in.route_missing"] >= 1


def test_no_healthy_upstream_and_connect_failure(world):
    out = raw_exchange(
        world["port"],
        _req(5, "com.raw.Dead:1.0") + _req(6, "com.raw.Dead:1.0"),
        bolt.BoltDecoder(),
        2,
    )
    assert sorted((f.request_id, f.status) for f in out) == [
        (5, bolt.STATUS_CONNECTION_CLOSED),
        (6, bolt.STATUS_CONNECTION_CLOSED),
    ]
    assert stats(world["proxy"])["cluster.dead.upstream_cx_connect_fail"] >= 1


def test_upstream_timeout_reply(world):
    # the request's own timeout (250 ms) bounds the upstream wait
    t0 = time.monotonic()
    out = raw_exchange(
        world["port"], _req(77, "com.raw.Silent:1.0", timeout=250), bolt.BoltDecoder(), 1
    )
    assert [(f.request_id, f.status) for f in out] == [(77, bolt.STATUS_TIMEOUT)]
    assert 0.2 < time.monotonic() - t0 < 2.0
    # with no timeout in the request, the BoltProxy default (400 ms here) applies
    out = raw_exchange(
        world["port"], _req(78, "com.raw.Silent:1.0", timeout=-1), bolt.BoltDecoder(), 1
    )
    assert [(f.request_id, f.status) for f in out] == [(78, bolt.STATUS_TIMEOUT)]
    # the upstream saw the request under another id, with the content intact
    got = bolt.BoltDecoder().feed(bytes(world["silent"].received))
    assert len(got) >= 2 and all(bytes(f.content) == b"\x91" for f in got)
    assert stats(world["proxy"])["cluster.silent.upstream_rq_timeout"] >= 2


def test_upstream_reset_reply(world):
    out = raw_exchange(world["port"], _req(900, "com.raw.Reset:1.0"), bolt.BoltDecoder(), 1)
    assert [(f.request_id, f.status) for f in out] == [(900, bolt.STATUS_CONNECTION_CLOSED)]
    assert stats(world["proxy"])["cluster.reset.upstream_rq_rx_reset"] >= 1


def test_oneway_is_forwarded_and_not_answered(world):
    before = len(world["silent"].received)
    out = raw_exchange(
        world["port"],
        _req(1, "com.raw.Silent:1.0", type=bolt.BOLT_TYPE_ONEWAY),
        bolt.BoltDecoder(),
        1,
        timeout=0.5,
    )
    assert out == []
    deadline = time.monotonic() + 2
    while len(world["silent"].received) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    (f,) = bolt.BoltDecoder().feed(bytes(world["silent"].received[before:]))
    assert f.type == bolt.BOLT_TYPE_ONEWAY and f.service() == "com.raw.Silent:1.0"


def test_malformed_frame_is_a_codec_exception_and_garbage_closes(world):
    bad = bytearray(_req(12, "com.raw.Silent:1.0"))
    off = 22 + len(bolt.SOFA_REQUEST_CLASS)
    bad[off : off + 4] = (0x7FFF).to_bytes(4, "big")  # header-map key length past its end
    out = raw_exchange(world["port"], bytes(bad), bolt.BoltDecoder(), 1)
    assert [(f.request_id, f.status) for f in out] == [(12, bolt.STATUS_CODEC_EXCEPTION)]
    import socket

    with socket.create_connection(("127.0.0.1", world["port"]), timeout=3) as s:
        s.sendall(b"\x07not bolt at all")
        assert s.recv(100) == b""  # closed
    assert stats(world["proxy"])["bolt.bolt_in.request_decoding_error"] >= 2


def test_garbage_and_mutated_frames_never_stop_the_proxy(world):
    good = _req(5, "com.nobody.Svc:1.0")
    send_mutations(world["port"], good, 7)
    # still serving, and the bad input was counted
    out = raw_exchange(world["port"], good, bolt.BoltDecoder(), 1)
    assert [(f.request_id, f.status) for f in out] == [(5, bolt.STATUS_NO_PROCESSOR)]
    assert node_client(world["port"], [{"method": "plus", "args": [2, 3]}]) == [
        {"ok": True, "result": 5}
    ]
    assert stats(world["proxy"])["bolt.bolt_in.request_decoding_error"] >= 20


def test_upstream_garbage_closes_that_connection_and_answers_the_client(world):
    """An upstream that answers with bytes that are not Bolt: the proxy closes that upstream
    connection (counted as a protocol error it closed itself), answers the pending request
    with CONNECTION_CLOSED and the client's id, and goes on serving."""
    proxy = world["proxy"]
    out = raw_exchange(world["port"], _req(41, "com.raw.Garbage:1.0"), bolt.BoltDecoder(), 1)
    assert [(f.request_id, f.status) for f in out] == [(41, bolt.STATUS_CONNECTION_CLOSED)]
    wait_stat(proxy, "cluster.garbage.upstream_cx_destroy", 1)
    s = stats(proxy)
    assert s["cluster.garbage.upstream_cx_protocol_error"] >= 1
    assert s["bolt.bolt_in.response_decoding_error"] >= 1
    assert s["bolt.bolt_in.response_error_caused_connection_close"] >= 1
    assert (
        s["cluster.garbage.upstream_cx_destroy_local"] == s["cluster.garbage.upstream_cx_destroy"]
    )
    assert s["cluster.garbage.upstream_cx_destroy_remote"] == 0
    assert node_client(world["port"], [{"method": "plus", "args": [1, 1]}]) == [
        {"ok": True, "result": 2}
    ]
