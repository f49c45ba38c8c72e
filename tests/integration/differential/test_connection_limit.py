"""envoy.filters.network.connection_limit in front of tcp_proxy: one bootstrap through Envoy
1.40 and sofamesh, the same held-open connections to both; which connections are served
(echo) and which are closed (at once, or after `delay`), and the filter's stats must agree."""

from __future__ import annotations

import pprint
import socket
import socketserver
import threading
import time

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get

LIMIT = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo():
    srv = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _cluster(name: str, port: int) -> dict:
    addr = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": addr}]}],
        },
    }


def _listener(name: str, port: int, limit: dict | None) -> dict:
    filters = []
    if limit is not None:
        filters.append(
            {
                "name": "envoy.filters.network.connection_limit",
                "typed_config": {"@type": LIMIT, **limit},
            }
        )
    filters.append(
        {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP, "stat_prefix": f"tcp_{name}", "cluster": "echo"},
        }
    )
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": filters}],
    }


def bootstrap(ports: dict[str, int], admin: int, echo: int) -> dict:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                _listener("two", ports["two"], {"stat_prefix": "two", "max_connections": 2}),
                _listener(
                    "slow",
                    ports["slow"],
                    {"stat_prefix": "slow", "max_connections": 1, "delay": "1s"},
                ),
            ],
            "clusters": [_cluster("echo", echo)],
        },
    }


class _Conn:
    """A client connection held open; `probe()` sends a line and says what came back."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.n = 0

    def probe(self) -> str:
        self.n += 1
        msg = f"hello {self.n}".encode()
        t0 = time.monotonic()
        try:
            self.sock.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = self.sock.recv(100)
                if not d:
                    break
                got += d
        except TimeoutError:
            return "timeout"
        except OSError:
            got = None
        if got == msg:
            return "echo"
        took = time.monotonic() - t0
        # `delay` is 1 s: "late" is a close after at least 0.7 s (a loaded machine adds, not
        # takes away, time), "at once" under 0.5 s
        when = "at once" if took < 0.5 else ("late" if took >= 0.7 else f"after {took:.2f}s")
        return f"closed {when}"

    def close(self) -> None:
        self.sock.close()


def _stats(admin: int) -> dict[str, int]:
    status, text = admin_get(admin, "/stats")
    assert status == 200
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("connection_limit.") and value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def _wait_stat(admin: int, name: str, want: int, timeout: float = 5.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        st = _stats(admin)
        if st.get(name) == want or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def _observe(kind: str, tmp_path, echo_port: int, workers: int = 1) -> list:
    ports = {"two": free_port(), "slow": free_port()}
    admin = free_port()
    boot = bootstrap(ports, admin, echo_port)
    if kind == "envoy":
        proxy = ProxyProcess.envoy(envoy_binary(), boot, tmp_path / kind, concurrency=workers)
    else:
        proxy = ProxyProcess.sofamesh(
            sofamesh_command(), boot, tmp_path / kind, concurrency=workers
        )
    seen: list = []
    with proxy:
        # the start-up check's connections (one a listener) are closed and uncounted first
        _wait_stat(admin, "connection_limit.two.active_connections", 0)
        _wait_stat(admin, "connection_limit.slow.active_connections", 0)
        base = _stats(admin)
        two = [_Conn(ports["two"]) for _ in range(2)]
        seen.append(("first two", [c.probe() for c in two]))
        extra = [_Conn(ports["two"]) for _ in range(2)]
        seen.append(("two over the limit", [c.probe() for c in extra]))
        a = "connection_limit.two.active_connections"
        st = _wait_stat(admin, a, 2)
        seen.append(("stats", {k: v - base.get(k, 0) for k, v in st.items() if ".two." in k}))
        # the two served ones are still served; one closes, and a new one takes its place
        seen.append(("held", [c.probe() for c in two]))
        two[0].close()
        _wait_stat(admin, a, 1)
        again = _Conn(ports["two"])
        seen.append(("after one closed", [again.probe(), _Conn(ports["two"]).probe()]))
        st = _wait_stat(admin, a, 2)
        seen.append(("stats", {k: v - base.get(k, 0) for k, v in st.items() if ".two." in k}))

        # delay: the rejected connection stays open (and counted) for 1 s, then is closed
        held = _Conn(ports["slow"])
        seen.append(("slow first", held.probe()))
        late = _Conn(ports["slow"])
        s = "connection_limit.slow."
        st = _wait_stat(
            admin, s + "limited_connections", base.get(s + "limited_connections", 0) + 1
        )
        seen.append(("slow while delayed", st.get(s + "active_connections")))
        seen.append(("slow over the limit", late.probe()))
        st = _wait_stat(admin, s + "active_connections", 1)
        seen.append(("stats", {k: v - base.get(k, 0) for k, v in st.items() if ".slow." in k}))
        for c in (*two, *extra, again, held, late):
            c.close()
    return seen


@pytest.mark.envoy
@pytest.mark.parametrize("workers", [1, 2])  # two: one limit for both workers' connections
def test_connection_limit_same_as_envoy(tmp_path, echo, workers):
    want = _observe("envoy", tmp_path, echo, workers)
    assert want[0] == ("first two", ["echo", "echo"]), want
    assert want[1] == ("two over the limit", ["closed at once", "closed at once"]), want
    assert want[8] == ("slow over the limit", "closed late"), want
    got = _observe("sofamesh", tmp_path, echo, workers)
    assert got == want, f"--- Envoy:\n{pprint.pformat(want)}\n--- sofamesh:\n{pprint.pformat(got)}"


def _start_fails(tmp_path, boot: dict, *args: str) -> str:
    import json
    import subprocess

    cfg = tmp_path / "b.json"
    cfg.write_text(json.dumps(boot))
    r = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", *args, "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0, r.stderr[-2000:]
    return r.stderr


def test_refused_before_hcm(tmp_path):
    """What is not implemented fails at start, naming the filter: the filter in front of an
    HCM."""
    boot = bootstrap({"two": free_port(), "slow": free_port()}, free_port(), 1)
    chain = boot["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["filters"][1] = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network"
            ".http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "web",
            "route_config": {"name": "r", "virtual_hosts": []},
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }
    err = _start_fails(tmp_path, boot, "--concurrency", "1")
    assert (
        "network filter 'envoy.filters.network.connection_limit' in front of an "
        "http_connection_manager is not implemented by sofamesh" in err
    ), err[-2000:]
