"""One listener carrying HTTP/1.1, Bolt and Dubbo (told apart by the first bytes, as MOSN's
Auto), and tcp_proxy passing an HSF port through untouched."""

from __future__ import annotations

import http.client
import socket

from sofamesh._core.codecs import bolt, hsf
from tests.support.http_upstream import RecordingUpstream

from .conftest import (
    SERVICE,
    Blackhole,
    NodeServer,
    RawUpstream,
    auto_filter,
    bolt_filter,
    bootstrap,
    cluster,
    dubbo_filter,
    free_port,
    golden_hsf,
    hcm,
    listener,
    node_client,
    raw_exchange,
    route_config,
    sofamesh,
    stats,
    tcp_filter,
)


def test_one_listener_http_bolt_and_dubbo(tmp_path):
    web = RecordingUpstream(("web",)).start()
    try:
        with NodeServer(tag="b1") as b1, NodeServer(dubbo=True, tag="d1") as d1:
            port = free_port()
            boot = bootstrap(
                [
                    listener(
                        "auto",
                        port,
                        [
                            auto_filter(
                                [
                                    hcm("web"),
                                    bolt_filter([route_config(SERVICE, "bolt_up")]),
                                    dubbo_filter(
                                        [
                                            {
                                                "name": "d",
                                                "interface": SERVICE,
                                                "routes": [
                                                    {
                                                        "match": {
                                                            "method": {
                                                                "name": {
                                                                    "safe_regex": {"regex": ".*"}
                                                                }
                                                            }
                                                        },
                                                        "route": {"cluster": "dubbo_up"},
                                                    }
                                                ],
                                            }
                                        ]
                                    ),
                                ]
                            )
                        ],
                    )
                ],
                [
                    cluster("web", [web.ports["web"]]),
                    cluster("bolt_up", [b1.port]),
                    cluster("dubbo_up", [d1.port]),
                ],
            )
            with sofamesh(boot, tmp_path) as proxy:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/hello")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                assert resp.status == 200
                assert web.wait_records(1)[0].target == "/hello"
                assert node_client(port, [{"method": "who"}]) == [{"ok": True, "result": "b1"}]
                assert node_client(port, [{"method": "who"}], mode="bolt2") == [
                    {"ok": True, "result": "b1"}
                ]
                assert node_client(port, [{"method": "who"}], mode="dubbo") == [
                    {"ok": True, "result": "d1"}
                ]
                # a heartbeat on the shared port is answered by the Bolt filter
                (ack,) = raw_exchange(port, bolt.heartbeat(5), bolt.BoltDecoder(), 1)
                assert ack.request_id == 5 and ack.cmdcode == 0
                s = stats(proxy)
                assert s["bolt.bolt_in.request"] >= 2 and s["dubbo.dubbo_in.request"] >= 1
    finally:
        web.stop()


def test_tcp_proxy_passes_hsf_through(tmp_path):
    req = golden_hsf()
    hb = hsf.HsfFrame(kind=hsf.HSF_HEARTBEAT, request_id=3).encode()
    with RawUpstream("echo") as echo:
        port = free_port()
        boot = bootstrap(
            [listener("hsf", port, [tcp_filter("hsf_up", "hsf")])], [cluster("hsf_up", [echo.port])]
        )
        with sofamesh(boot, tmp_path) as proxy:
            out = raw_exchange(port, req + hb, hsf.HsfDecoder(), 2)
            assert [f.encode() for f in out] == [req, hb]
            assert out[0].service == "com.test.pandora.hsf.HelloService:1.0.0.daily"
            assert bytes(echo.received) == req + hb
            # half-close: the client's FIN reaches the server, whose FIN comes back
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"ping")
                assert s.recv(4) == b"ping"
                s.shutdown(socket.SHUT_WR)
                assert s.recv(10) == b""
            st = stats(proxy)
            assert st["tcp.hsf.downstream_cx_total"] >= 2
            assert st["cluster.hsf_up.upstream_cx_total"] >= 2


def test_two_workers_serve_bolt_and_dubbo_and_sum_stats(tmp_path):
    with NodeServer(tag="s1") as s1, NodeServer(dubbo=True, tag="d1") as d1:
        bp, dp = free_port(), free_port()
        boot = bootstrap(
            [
                listener("bolt", bp, [bolt_filter([route_config(SERVICE, "bolt_up")])]),
                listener(
                    "dubbo",
                    dp,
                    [
                        dubbo_filter(
                            [
                                {
                                    "name": "d",
                                    "interface": SERVICE,
                                    "routes": [{"match": {}, "route": {"cluster": "dubbo_up"}}],
                                }
                            ]
                        )
                    ],
                ),
            ],
            [cluster("bolt_up", [s1.port]), cluster("dubbo_up", [d1.port])],
        )
        proxy = sofamesh(boot, tmp_path)
        proxy.argv[proxy.argv.index("--concurrency") + 1] = "2"
        with proxy:
            for _ in range(4):  # new connections, spread over the workers by SO_REUSEPORT
                assert node_client(bp, [{"method": "plus", "args": [2, 2]}]) == [
                    {"ok": True, "result": 4}
                ]
                assert node_client(dp, [{"method": "echo", "args": ["e"]}], mode="dubbo") == [
                    {"ok": True, "result": "e"}
                ]
            s = stats(proxy)
            assert s["bolt.bolt_in.request"] == 4 and s["dubbo.dubbo_in.request"] == 4


def test_tcp_proxy_idle_timeout(tmp_path):
    import time

    with RawUpstream("echo") as echo:
        port = free_port()
        flt = tcp_filter("up", "idle")
        flt["typed_config"]["idle_timeout"] = "0.3s"
        boot = bootstrap([listener("t", port, [flt])], [cluster("up", [echo.port])])
        with sofamesh(boot, tmp_path) as proxy:
            # the start-up check's connection (connect, close) must be gone first: under
            # load its half-close can outlive the 0.3 s and be timed out itself
            deadline = time.monotonic() + 10
            while stats(proxy)["tcp.idle.downstream_cx_active"] and time.monotonic() < deadline:
                time.sleep(0.05)
            base = stats(proxy)["tcp.idle.idle_timeout"]
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"hi")
                assert s.recv(2) == b"hi"
                t0 = time.monotonic()
                assert s.recv(10) == b""  # closed by the proxy once idle
                assert 0.2 < time.monotonic() - t0 < 2.5
            assert stats(proxy)["tcp.idle.idle_timeout"] == base + 1


def test_tcp_proxy_connect_timeout_and_no_reading_before_connected(tmp_path):
    """While the upstream connect is in progress the client is not read (bytes held for a
    connect that may never finish would grow without bound), and the connect gives up after
    the cluster's connect_timeout: the client is closed and it is counted."""
    import time

    with Blackhole() as hole:
        port = free_port()
        boot = bootstrap(
            [listener("t", port, [tcp_filter("up", "hole")])],
            [cluster("up", [hole.port], connect_timeout="1s")],
        )
        with sofamesh(boot, tmp_path) as proxy:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.setblocking(False)
                chunk = b"x" * 65536
                sent = 0
                t0 = time.monotonic()
                while time.monotonic() - t0 < 0.5 and sent < 64 * 1024 * 1024:
                    try:
                        sent += s.send(chunk)
                    except BlockingIOError:
                        time.sleep(0.01)
                # only the kernel's socket buffers (a few MB) took bytes
                assert sent < 16 * 1024 * 1024, sent
                s.setblocking(True)
                s.settimeout(10)
                try:
                    assert s.recv(10) == b""  # closed once the connect timed out
                except ConnectionResetError:
                    pass
                assert time.monotonic() - t0 < 5
            assert stats(proxy)["cluster.up.upstream_cx_connect_timeout"] >= 1
