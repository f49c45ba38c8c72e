"""Hot restart (`--restart-epoch`, proxy/hot_restart.py): a new sofamesh takes over from the
running one without losing a request or resetting a connection.

- Under wrk load (HTTP/1.1 keep-alive), epoch 1 starts, takes the listening sockets and the
  admin's, and epoch 0 hands it every connection as it comes between requests, then exits
  by itself: wrk sees no error, no non-2xx answer, no socket error; epoch 1's counters
  include epoch 0's. With `--concurrency` 1 -> 1, 1 -> 2 and 2 -> 3 -> 1 (worker pools
  taking over from one process, from a pool, and a pool handing over to one process).
- An idle keep-alive connection opened to epoch 0 is served by epoch 1 on its next
  request: the same TCP connection, moved.
- Real sofa-rpc-node Bolt and Dubbo clients calling without pause: every call answered,
  each client's one connection moved.
- grpcio clients (HTTP/2): GOAWAY, then new connections to epoch 1; every call succeeds.
- A sidecar fed by the pilot: its LDS listener's socket and connection move.
The last three with one process and with two workers per epoch.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import sofamesh_command
from tests.integration.admin.helpers import get, stop, wait_live, write_bootstrap
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

pytestmark = pytest.mark.timeout(120)


def start(
    config: Path, admin: int, base_id: int, epoch: int, log: Path, concurrency: int = 1
) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*sofamesh_command(), "proxy", "-c", str(config), "-l", "info",
             "--concurrency", str(concurrency), "--base-id", str(base_id),
             "--restart-epoch", str(epoch), "--parent-shutdown-time-s", "20"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc


def stats(admin: int) -> dict[str, int]:
    _, body = get(admin, "/stats")
    out = {}
    for line in body.splitlines():
        k, _, v = line.partition(": ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


@pytest.fixture
def setup(tmp_path):
    up = RecordingUpstream(["a"]).start()
    admin, port = free_ports(2)
    cfg = write_bootstrap(tmp_path / "proxy.yaml", admin=admin, port=port, upstream=up.ports["a"])
    base_id = 1000 + os.getpid() % 50000  # our own: other tests' proxies use base id 0
    procs: list[subprocess.Popen] = []
    try:
        yield cfg, admin, port, base_id, procs, tmp_path
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
        up.stop()


@pytest.mark.parametrize(
    "workers",
    [
        pytest.param([1, 1], id="1-1"),
        # pool to pool: 2 -> 3 (the third worker binds beside the two sockets it finds),
        # then 3 -> 1 (one process serves all three sockets)
        pytest.param([2, 3, 1], id="2-3-1"),
        # one process (no SO_REUSEPORT) to a pool: the second worker shares its socket
        pytest.param([1, 2], id="1-2"),
    ],
)
def test_upgrade_under_wrk_loses_nothing(setup, workers):
    """wrk keeps 16 keep-alive connections busy while each epoch in turn takes over from
    the one before, with `--concurrency` changing on the way."""
    if shutil.which("wrk") is None:
        pytest.fail("wrk is needed (ci/install.d/bench.sh installs it)")
    cfg, admin, port, base_id, procs, tmp = setup
    logs = [tmp / f"epoch{e}.log" for e in range(len(workers))]
    old = start(cfg, admin, base_id, 0, logs[0], workers[0])
    procs.append(old)
    wait_live(admin, old)
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c16", f"-d{3 + 2 * len(workers)}s", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    handed = 0
    for epoch in range(1, len(workers)):
        time.sleep(1.5)
        new = start(cfg, admin, base_id, epoch, logs[epoch], workers[epoch])
        procs.append(new)
        # the old epoch drains into the new one and exits by itself, before wrk is done
        assert old.wait(timeout=30) == 0, logs[epoch - 1].read_text()[-3000:]
        text = logs[epoch - 1].read_text()
        # one line per server (worker) of the old epoch
        moved = [int(n) for n in re.findall(r"drained \((\d+) connections handed over\)", text)]
        assert len(moved) == workers[epoch - 1], text[-3000:]
        handed += sum(moved)
        old = new
    out, _ = wrk.communicate(timeout=30)
    assert old.poll() is None, logs[-1].read_text()[-3000:]
    assert wrk.returncode == 0, out
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert done > 100, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    assert handed >= 1
    s = stats(admin)  # the last epoch answers on the admin socket it inherited
    # the connections each epoch adopted, carried over with the counters
    assert s["server.hot_restart.connections_adopted"] == handed
    assert s["server.hot_restart_epoch"] == len(workers) - 1
    # every epoch's counters carried over: every request wrk completed is counted once
    assert s["http.ingress_http.downstream_rq_2xx"] >= done
    assert s["http.ingress_http.downstream_rq_2xx"] <= done + 16  # in flight as wrk stopped
    assert s.get("http.ingress_http.downstream_rq_5xx", 0) == 0
    ups = s["cluster.backend.upstream_rq_total"]
    assert done <= ups <= done + 16
    import json as _json

    info = _json.loads(get(admin, "/server_info")[1])
    assert info["hot_restart_version"] == "sofamesh.1"
    # the uptime of all epochs runs from epoch 0's start (Envoy's child gets its parent's)
    all_s, cur_s = (int(info[k].rstrip("s")) for k in ("uptime_all_epochs", "uptime_current_epoch"))
    assert all_s >= cur_s + 1, info


def test_idle_keep_alive_connection_moves_to_the_new_process(setup):
    cfg, admin, port, base_id, procs, tmp = setup
    old = start(cfg, admin, base_id, 0, tmp / "epoch0.log")
    procs.append(old)
    wait_live(admin, old)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/first")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("connection") != "close"
    r.read()
    sock = conn.sock
    new = start(cfg, admin, base_id, 1, tmp / "epoch1.log")
    procs.append(new)
    assert old.wait(timeout=30) == 0, (tmp / "epoch0.log").read_text()[-3000:]
    conn.request("GET", "/second")  # the same TCP connection: now epoch 1's
    r = conn.getresponse()
    assert r.status == 200, r.read()
    r.read()
    assert conn.sock is sock
    conn.close()
    assert stats(admin)["server.hot_restart.connections_adopted"] == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_dubbo_and_bolt_connections_move_with_their_calls_answered(tmp_path, workers):
    """Real sofa-rpc-node clients (Bolt, and Dubbo over dubbo-remoting) call through epoch 0
    without pause while epoch 1 takes over: every call is answered, and each client's one
    connection is the same throughout (moved, not reconnected)."""
    import json as _json

    from tests.integration.rpc.conftest import (
        PEERS,
        NodeServer,
        bolt_filter,
        bootstrap,
        cluster,
        dubbo_filter,
        listener,
        node_ready,
        route_config,
    )

    iface = "com.nodejs.test.TestService"
    with NodeServer(tag="b") as bolt_up, NodeServer(dubbo=True, tag="d") as dubbo_up:
        bport, dport = free_ports(2)
        boot = bootstrap(
            [
                listener("bolt", bport, [bolt_filter([route_config(iface, "bolt_up")])]),
                listener("dubbo", dport, [dubbo_filter([route_config(iface, "dubbo_up")])]),
            ],
            [cluster("bolt_up", [bolt_up.port]), cluster("dubbo_up", [dubbo_up.port])],
        )
        admin = boot["admin"]["address"]["socket_address"]["port_value"]
        cfg = tmp_path / "rpc.json"
        cfg.write_text(_json.dumps(boot))
        base_id = 60000 + os.getpid() % 5000
        old = start(cfg, admin, base_id, 0, tmp_path / "epoch0.log", workers)
        new = None
        clients = []
        try:
            wait_live(admin, old)
            calls = _json.dumps([{"method": "who"}, {"method": "plus", "args": [2, 3]}])
            for port, extra in ((bport, []), (dport, ["--dubbo"])):
                argv = ["node", str(node_ready() / "rpc_client.js"), "--target",
                        f"127.0.0.1:{port}", "--calls", calls, "--repeat", "3000", *extra]  # fmt: skip
                clients.append(subprocess.Popen(argv, cwd=PEERS, stdout=subprocess.PIPE, text=True))
            time.sleep(0.5)
            new = start(cfg, admin, base_id, 1, tmp_path / "epoch1.log", workers)
            assert old.wait(timeout=30) == 0, (tmp_path / "epoch0.log").read_text()[-3000:]
            for c, tag in zip(clients, ("b", "d")):
                out, _ = c.communicate(timeout=60)
                results = _json.loads(out.strip().splitlines()[-1])
                assert len(results) == 6000
                bad = [r for r in results if not r.get("ok")]
                assert not bad, bad[:3]
                assert {r["result"] for r in results} == {tag, 5}
            s = stats(admin)
            assert s["server.hot_restart.connections_adopted"] == 2  # one a client
            assert s["bolt.bolt_in.cx_total"] >= 1 and s["dubbo.dubbo_in.cx_total"] >= 1
        finally:
            for c in clients:
                if c.poll() is None:
                    c.kill()
            for p in (old, new):
                if p is not None and p.poll() is None:
                    stop(p)


GRPC_BOOTSTRAP = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: grpc_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: grpc_in
          codec_type: AUTO
          drain_timeout: 0.5s
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: grpc_up, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: grpc_up
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: grpc_up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_grpc_calls_across_an_upgrade_all_succeed(tmp_path, workers):
    """grpcio clients (HTTP/2) calling without pause while epoch 1 takes over: epoch 0 sends
    GOAWAY (last stream id 2^31-1, then the real one after the HCM's drain_timeout) and
    closes each connection once its streams are done; the channels open new connections,
    to epoch 1. Every call succeeds, and epoch 0 reset no stream."""
    import threading
    from concurrent import futures

    import grpc

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"echo:" + request

    upstream = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    upstream.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    up_port = upstream.add_insecure_port("127.0.0.1:0")
    upstream.start()
    admin, port = free_ports(2)
    cfg = tmp_path / "grpc.yaml"
    cfg.write_text(GRPC_BOOTSTRAP.format(admin=admin, port=port, upstream=up_port))
    base_id = 20000 + os.getpid() % 20000
    old = start(cfg, admin, base_id, 0, tmp_path / "epoch0.log", workers)
    new = None
    stop_calls = threading.Event()
    results: list[str] = []

    def caller(n: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/test.Echo/Echo")
            i = 0
            while not stop_calls.is_set():
                try:
                    got = call(f"{n}-{i}".encode(), timeout=5)
                    results.append("ok" if got == f"echo:{n}-{i}".encode() else repr(got))
                except grpc.RpcError as e:
                    results.append(f"{e.code()}: {e.details()}")
                i += 1

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    try:
        wait_live(admin, old)
        for t in threads:
            t.start()
        time.sleep(1.5)
        new = start(cfg, admin, base_id, 1, tmp_path / "epoch1.log", workers)
        assert old.wait(timeout=30) == 0, (tmp_path / "epoch0.log").read_text()[-3000:]
        time.sleep(1.0)  # calls go on against epoch 1 alone
        stop_calls.set()
        for t in threads:
            t.join(timeout=10)
        bad = [r for r in results if r != "ok"]
        assert len(results) > 200 and not bad, (len(results), bad[:5])
        s = stats(admin)  # epoch 0's counters included
        assert s.get("http.grpc_in.downstream_rq_rx_reset", 0) == 0
        assert s.get("http.grpc_in.downstream_rq_tx_reset", 0) == 0
        assert s["http.grpc_in.downstream_rq_completed"] >= len(results)
        # grpcio's channels share one connection: epoch 0's, then a new one to epoch 1
        assert s["http.grpc_in.downstream_cx_http2_total"] >= 2
    finally:
        stop_calls.set()
        for p in (old, new):
            if p is not None and p.poll() is None:
                stop(p)
        upstream.stop(0)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sidecar_fed_by_the_pilot_moves_its_lds_listener_and_connections(tmp_path, workers):
    """A sidecar whose listeners come over ADS (from `sofamesh pilot`): epoch 1 takes the LDS
    listener's socket by name before its own LDS arrives, and a kept-alive connection to it
    moves from epoch 0 to epoch 1."""
    import json as _json

    from tests.integration.pilot.conftest import PilotProcess, ads_bootstrap

    up = RecordingUpstream(["a"]).start()
    pilot = PilotProcess(tmp_path / "pilot").start()
    procs: list[subprocess.Popen] = []
    try:
        pilot.register("orders", "o1", address="127.0.0.1", port=up.ports["a"], protocol="http")
        (admin,) = free_ports(1)
        cfg = tmp_path / "sidecar.json"
        cfg.write_text(_json.dumps(ads_bootstrap(pilot.xds_port, admin, delta=True)))
        base_id = 40000 + os.getpid() % 20000
        old = start(cfg, admin, base_id, 0, tmp_path / "epoch0.log", workers)
        procs.append(old)
        wait_live(admin, old)
        conn = http.client.HTTPConnection("127.0.0.1", pilot.outbound_port, timeout=5)
        conn.request("GET", "/first", headers={"host": "orders"})
        r = conn.getresponse()
        assert r.status == 200, r.read()
        r.read()
        new = start(cfg, admin, base_id, 1, tmp_path / "epoch1.log", workers)
        procs.append(new)
        assert old.wait(timeout=30) == 0, (tmp_path / "epoch0.log").read_text()[-3000:]
        conn.request("GET", "/second", headers={"host": "orders"})
        r = conn.getresponse()
        assert r.status == 200, r.read()
        r.read()
        conn.close()
        assert stats(admin)["server.hot_restart.connections_adopted"] == 1
        # each server (worker) took its LDS listener's socket
        took = re.findall(r"took 1 listening sockets from epoch 0: (\S+)",
                          (tmp_path / "epoch1.log").read_text())  # fmt: skip
        assert len(took) == workers and took[0] in get(admin, "/listeners")[1], took
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
        pilot.stop()
        up.stop()


TCP_BOOTSTRAP = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: tcp_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_in
          cluster: echo
  clusters:
  - name: echo
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_tcp_proxy_connections_move_with_their_upstream_connections(tmp_path, workers):
    """Six clients keep echoing numbered lines through a tcp_proxy listener while epoch 1
    takes over: every line comes back, in order, on the client's one connection, and the
    upstream saw six connections in all (each moved with its downstream, none reconnected);
    epoch 0 exits as soon as they moved, not after --parent-shutdown-time-s."""
    import socket
    import socketserver
    import threading

    accepted = []

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            accepted.append(self.client_address)
            while data := self.request.recv(65536):
                self.request.sendall(data)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    up = Server(("127.0.0.1", 0), Echo)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    admin, port = free_ports(2)
    cfg = tmp_path / "tcp.yaml"
    cfg.write_text(TCP_BOOTSTRAP.format(admin=admin, port=port, upstream=up.server_address[1]))
    base_id = 50000 + os.getpid() % 10000
    stop_now = threading.Event()
    done: dict[int, int] = {}
    errors: list[str] = []

    def client(i: int) -> None:
        n = 0
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                buf = b""
                while not stop_now.is_set():
                    line = f"{i}:{n}\n".encode()
                    s.sendall(line)
                    while b"\n" not in buf:
                        chunk = s.recv(4096)
                        if not chunk:
                            raise ConnectionError("closed")
                        buf += chunk
                    got, _, buf = buf.partition(b"\n")
                    if got + b"\n" != line:
                        raise ValueError(f"{got!r} for {line!r}")
                    n += 1
        except Exception as e:  # noqa: BLE001 - what went wrong is the test's finding
            errors.append(f"client {i} after {n}: {type(e).__name__}: {e}")
        done[i] = n

    old = start(cfg, admin, base_id, 0, tmp_path / "epoch0.log", workers)
    new = None
    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    try:
        wait_live(admin, old)
        for t in threads:
            t.start()
        time.sleep(1.0)
        new = start(cfg, admin, base_id, 1, tmp_path / "epoch1.log", workers)
        t0 = time.monotonic()
        assert old.wait(timeout=30) == 0, (tmp_path / "epoch0.log").read_text()[-3000:]
        assert time.monotonic() - t0 < 15  # (--parent-shutdown-time-s is 20)
        time.sleep(1.0)  # the lines go on through epoch 1 alone
        s = stats(admin)
        stop_now.set()
        for t in threads:
            t.join(timeout=10)
        assert not errors, errors
        assert len(done) == 6 and min(done.values()) > 20, done
        assert len(accepted) == 6, accepted  # no upstream connection made again
        assert s["server.hot_restart.connections_adopted"] == 6
        # each epoch counts the connections it served: epoch 0's six (carried over) and the
        # same six adopted by epoch 1, as an adopted HTTP/1.1 connection is counted
        assert s["tcp.tcp_in.downstream_cx_total"] == 12
        assert s["tcp.tcp_in.downstream_cx_active"] == 6
    finally:
        stop_now.set()
        for p in (old, new):
            if p is not None and p.poll() is None:
                stop(p)
        up.shutdown()
