"""Dubbo through sofamesh with real peers (dubbo-remoting client and server, via
sofa-rpc-node), Envoy's dubbo_proxy config shape, and Envoy 1.40's dubbo_proxy given the
same config and the same traffic for comparison."""

from __future__ import annotations

import time

import pytest

from sofamesh._core.codecs import dubbo
from sofamesh._core.codecs.hessian import H2Cursor, h2_encode_simple
from tests.conftest import envoy_binary
from tests.support.envoy import ProxyProcess

from .conftest import (
    SERVICE,
    NodeServer,
    RawUpstream,
    bootstrap,
    cluster,
    dubbo_filter,
    free_port,
    listener,
    node_client,
    raw_exchange,
    send_mutations,
    sofamesh,
    stats,
)


def any_method(cluster_name: str) -> dict:
    # Envoy requires a method matcher on every route
    return {
        "match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
        "route": {"cluster": cluster_name},
    }


def dubbo_routes() -> list[dict]:
    return [
        {
            "name": "node",
            "interface": SERVICE,
            "routes": [
                {"match": {"method": {"name": {"exact": "who"}}}, "route": {"cluster": "d2"}},
                {"match": {"method": {"name": {"prefix": "p"}}}, "route": {"cluster": "d1"}},
                {"match": {"method": {"name": {"exact": "echo"}}}, "route": {"cluster": "d1"}},
                {"match": {"method": {"name": {"exact": "fail"}}}, "route": {"cluster": "d1"}},
            ],
        },
        {
            "name": "grouped",
            "interface": "svc.Grouped",
            "group": "blue",
            "routes": [any_method("silent")],
        },
        {
            "name": "hdr",
            "interface": "svc.Headers",
            "routes": [
                {
                    "match": {
                        "method": {"name": {"exact": "m"}},
                        "headers": [{"name": "tenant", "string_match": {"exact": "t1"}}],
                    },
                    "route": {"cluster": "silent"},
                }
            ],
        },
        {"name": "dead", "interface": "svc.Dead", "routes": [any_method("dead")]},
        {"name": "reset", "interface": "svc.Reset", "routes": [any_method("reset")]},
        {"name": "silent", "interface": "svc.Silent", "routes": [any_method("silent")]},
    ]


@pytest.fixture(scope="module")
def peers():
    with (
        NodeServer(dubbo=True, tag="d1") as d1,
        NodeServer(dubbo=True, tag="d2") as d2,
        RawUpstream("silent") as silent,
        RawUpstream("reset") as reset,
    ):
        yield {"d1": d1, "d2": d2, "silent": silent, "reset": reset}


def make_boot(peers) -> tuple[dict, int]:
    port = free_port()
    boot = bootstrap(
        [listener("dubbo", port, [dubbo_filter(dubbo_routes())])],
        [
            cluster("d1", [peers["d1"].port]),
            cluster("d2", [peers["d2"].port]),
            cluster("silent", [peers["silent"].port]),
            cluster("reset", [peers["reset"].port]),
            cluster("dead", [free_port()]),
        ],
    )
    return boot, port


@pytest.fixture(scope="module")
def mesh(peers, tmp_path_factory):
    boot, port = make_boot(peers)
    with sofamesh(boot, tmp_path_factory.mktemp("dubbo")) as proxy:
        yield {"proxy": proxy, "port": port, **peers}


CALLS = [
    {"method": "plus", "args": [40, 2]},
    {"method": "fail", "args": ["boom"]},
    {"method": "echo", "args": ["héllo wörld ✓"]},
    {"method": "echo", "args": ["y" * 70000]},
    {"method": "who"},
]


def _req(rid: int, service: str, method: str = "m", version: str = "1.0", **att) -> bytes:
    return dubbo.encode_request(
        rid, "2.0.2", service, version, method, "I", h2_encode_simple(1), att
    )


def test_dubbo_remoting_through_sofamesh(mesh):
    res = node_client(mesh["port"], CALLS, mode="dubbo", repeat=2)
    for i in (0, 5):
        assert res[i] == {"ok": True, "result": 42}
        assert not res[i + 1]["ok"] and res[i + 1]["error"] == "boom"
        assert res[i + 2] == {"ok": True, "result": "héllo wörld ✓"}
        assert res[i + 3] == {"ok": True, "result": "y" * 70000}
        assert res[i + 4] == {"ok": True, "result": "d2"}  # routed by method to cluster d2
    s = stats(mesh["proxy"])
    assert s["dubbo.dubbo_in.request"] >= 10 and s["cluster.d2.upstream_rq_total"] >= 2


def test_group_and_attachment_header_routing(mesh):
    silent = mesh["silent"]
    before = len(silent.received)
    # group "blue" routes; another group has no route
    out = raw_exchange(
        mesh["port"], _req(1, "svc.Grouped", group="red", timeout="200"), dubbo.DubboDecoder(), 1
    )
    assert [(f.request_id, f.status) for f in out] == [(1, dubbo.DUBBO_SERVICE_NOT_FOUND)]
    out = raw_exchange(
        mesh["port"], _req(2, "svc.Grouped", group="blue", timeout="200"), dubbo.DubboDecoder(), 1
    )
    assert [(f.request_id, f.status) for f in out] == [(2, dubbo.DUBBO_SERVER_TIMEOUT)]
    # an attachment matched as a header, read after the arguments
    out = raw_exchange(
        mesh["port"], _req(3, "svc.Headers", tenant="t1", timeout="200"), dubbo.DubboDecoder(), 1
    )
    assert out[0].status == dubbo.DUBBO_SERVER_TIMEOUT
    out = raw_exchange(mesh["port"], _req(4, "svc.Headers", tenant="t2"), dubbo.DubboDecoder(), 1)
    assert out[0].status == dubbo.DUBBO_SERVICE_NOT_FOUND
    got = dubbo.DubboDecoder().feed(bytes(silent.received[before:]))
    assert len(got) == 2
    for f in got:
        assert f.parse_invocation() == 0 and f.service in ("svc.Grouped", "svc.Headers")


def test_local_replies_carry_the_request_id(mesh):
    cases = [
        ("svc.Dead", dubbo.DUBBO_SERVER_ERROR, "remote connection failure"),
        ("svc.Reset", dubbo.DUBBO_SERVER_ERROR, "remote connection failure"),
        ("svc.Silent", dubbo.DUBBO_SERVER_TIMEOUT, "timeout"),
        ("svc.Nowhere", dubbo.DUBBO_SERVICE_NOT_FOUND, "no route for interface 'svc.Nowhere'"),
    ]
    for i, (svc, status, text) in enumerate(cases):
        rid = (1 << 62) + i
        (f,) = raw_exchange(mesh["port"], _req(rid, svc, timeout="300"), dubbo.DubboDecoder(), 1)
        assert (f.request_id, f.status, f.is_request) == (rid, status, False)
        assert text in f.error_message()


def test_heartbeat_answered_locally_and_oneway(mesh):
    proxy = mesh["proxy"]
    before = stats(proxy).get("cluster.d1.upstream_cx_total", 0)
    (f,) = raw_exchange(mesh["port"], dubbo.heartbeat(123456789), dubbo.DubboDecoder(), 1)
    assert f.is_event and f.status == 20 and f.request_id == 123456789
    assert stats(proxy).get("cluster.d1.upstream_cx_total", 0) == before
    silent = mesh["silent"]
    n = len(silent.received)
    oneway = dubbo.encode_request(9, "2.0.2", "svc.Silent", "1.0", "m", "", b"", {}, two_way=False)
    assert raw_exchange(mesh["port"], oneway, dubbo.DubboDecoder(), 1, timeout=0.4) == []
    deadline = time.monotonic() + 2
    while len(silent.received) == n and time.monotonic() < deadline:
        time.sleep(0.02)
    (g,) = dubbo.DubboDecoder().feed(bytes(silent.received[n:]))
    assert not g.two_way and g.parse_invocation() == 0 and g.service == "svc.Silent"


def test_bad_body_is_bad_request_and_bad_magic_closes(mesh):
    frame = dubbo.DubboFrame(77, body=b"\x05\x32\x2e\x30\x2e\x32\x40").encode()
    (f,) = raw_exchange(mesh["port"], frame, dubbo.DubboDecoder(), 1)
    assert (f.request_id, f.status) == (77, dubbo.DUBBO_BAD_REQUEST)
    assert (
        raw_exchange(mesh["port"], b"\xda\xbc" + bytes(20), dubbo.DubboDecoder(), 1, timeout=1)
        == []
    )
    assert stats(mesh["proxy"])["dubbo.dubbo_in.request_decoding_error"] >= 2


@pytest.mark.envoy
def test_envoy_dubbo_proxy_and_sofamesh_agree(peers, tmp_path):
    """The same config and the same Dubbo traffic through Envoy 1.40 and sofamesh."""
    boot, port = make_boot(peers)
    calls = [c for c in CALLS] + [{"method": "plus", "args": [i, 1]} for i in range(30)]
    raw = _req(41, "svc.Nowhere") + _req(42, "svc.Dead") + dubbo.heartbeat(43)
    seen = {}
    for name, proc in (
        ("envoy", ProxyProcess.envoy(envoy_binary(), boot, tmp_path / "e")),
        ("sofamesh", sofamesh(boot, tmp_path / "s")),
    ):
        with proc:
            results = node_client(port, calls, mode="dubbo", repeat=2)
            frames = raw_exchange(port, raw, dubbo.DubboDecoder(), 3)
            time.sleep(0.2)  # let the last counters land
            counters = {k: v for k, v in stats(proc).items() if k.startswith("dubbo.")}
            seen[name] = (
                results,
                sorted((f.request_id, f.status, f.flags) for f in frames),
                {f.request_id: f for f in frames},
                counters,
            )
    assert seen["envoy"][0] == seen["sofamesh"][0]  # every client-visible result
    assert seen["envoy"][1] == seen["sofamesh"][1] == [(41, 60, 2), (42, 80, 2), (43, 20, 0x22)]
    # Envoy writes a flag before the error text; sofamesh writes the bare string, as
    # Dubbo's own codec does for a non-OK status. The text is the same.
    e41, s41 = seen["envoy"][2][41], seen["sofamesh"][2][41]
    c = H2Cursor(bytes(e41.body))
    c.py_read_simple()
    assert c.py_read_str() == s41.error_message()
    # the filter's stats, by Envoy's names, agree
    same = (
        "request",
        "request_event",
        "request_decoding_success",
        "request_decoding_error",
        "request_oneway",
        "request_active",
        "response",
        "response_success",
        "response_error",
        "response_decoding_success",
        "response_decoding_error",
        "local_response_success",
        "local_response_error",
        "local_response_business_exception",
        "response_error_caused_connection_close",
        "cx_destroy_local_with_active_rq",
        "cx_destroy_remote_with_active_rq",
    )
    env, mesh_ = seen["envoy"][3], seen["sofamesh"][3]
    assert {k: env.get(f"dubbo.dubbo_in.{k}") for k in same} == {
        k: mesh_.get(f"dubbo.dubbo_in.{k}") for k in same
    }
    assert env["dubbo.dubbo_in.request"] == 72


def test_graceful_drain_sends_readonly_and_keeps_serving(peers, tmp_path):
    import http.client
    import socket

    boot, port = make_boot(peers)
    with sofamesh(boot, tmp_path) as proxy:
        aport = int(proxy.bootstrap["admin"]["address"]["socket_address"]["port_value"])
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(dubbo.heartbeat(1))  # the connection is established and served
            dec = dubbo.DubboDecoder()
            assert dec.feed(s.recv(1000))[0].is_event
            conn = http.client.HTTPConnection("127.0.0.1", aport, timeout=3)
            conn.request("POST", "/drain_listeners?graceful")
            assert conn.getresponse().status == 200
            conn.close()
            (ev,) = dec.feed(s.recv(1000))
            assert ev.is_request and ev.is_event and not ev.two_way
            assert bytes(ev.body) == b"\x01R"  # READONLY: move new calls elsewhere
            # requests already on their way are still answered
            s.sendall(_req(8, "svc.Nowhere"))
            (r,) = dec.feed(s.recv(1000))
            assert (r.request_id, r.status) == (8, dubbo.DUBBO_SERVICE_NOT_FOUND)


def test_garbage_and_mutated_frames_never_stop_the_proxy(mesh):
    good = _req(6, "svc.Nowhere")
    send_mutations(mesh["port"], good, 11, prefix=b"\xda\xbb")
    (f,) = raw_exchange(mesh["port"], good, dubbo.DubboDecoder(), 1)
    assert (f.request_id, f.status) == (6, dubbo.DUBBO_SERVICE_NOT_FOUND)
    assert node_client(mesh["port"], [{"method": "plus", "args": [2, 3]}], mode="dubbo") == [
        {"ok": True, "result": 5}
    ]
    assert stats(mesh["proxy"])["dubbo.dubbo_in.request_decoding_error"] >= 10
