"""The overload manager's envoy.resource_monitors.global_downstream_max_connections: one
bootstrap (two tcp_proxy listeners and one with ignore_global_conn_limit) through Envoy 1.40
and sofamesh, the same held-open connections to both; which are served and which closed on
accept, and the listeners' counters, must agree; with one worker and with two (whose
connections count against one limit, in Envoy an atomic, in sofamesh a count in the memory
its worker processes share). A worker killed with connections held: its successor takes
back its part of the count."""

from __future__ import annotations

import pprint
import subprocess
import time

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.differential.test_connection_limit import _cluster, _Conn, echo  # noqa: F401
from tests.support.envoy import ProxyProcess, admin_get

MON = "envoy.resource_monitors.global_downstream_max_connections"
DC = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
    ".DownstreamConnectionsConfig"
)
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAMES = ("a", "b", "free", "web")


def _listener(name: str, port: int) -> dict:
    out = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {"@type": TCP, "stat_prefix": name, "cluster": "echo"},
                    }
                ]
            }
        ],
    }
    if name == "free":
        out["ignore_global_conn_limit"] = True
    if name == "web":  # an HTTP listener answering 200 itself
        vh = {
            "name": "any",
            "domains": ["*"],
            "routes": [
                {
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                }
            ],
        }
        out["filter_chains"][0]["filters"] = [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM,
                    "stat_prefix": "web",
                    "route_config": {"name": "r", "virtual_hosts": [vh]},
                    "http_filters": [
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
                    ],
                },
            }
        ]
    return out


def _http(c: _Conn) -> str:
    """A GET on a held connection: its status line, or how the connection ended."""
    try:
        c.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while b"\r\n" not in got:
            d = c.sock.recv(1000)
            if not d:
                return "closed"
            got += d
    except TimeoutError:
        return "timeout"
    except OSError:
        return "closed"
    return got.split(b"\r\n")[0].decode()


def bootstrap(ports: dict[str, int], admin: int, echo_port: int, limit: int) -> dict:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": MON,
                    "typed_config": {"@type": DC, "max_active_downstream_connections": limit},
                }
            ]
        },
        "static_resources": {
            "listeners": [_listener(n, ports[n]) for n in NAMES],
            "clusters": [_cluster("echo", echo_port)],
        },
    }


def _stats(admin: int, ports: dict[str, int]) -> dict[str, int]:
    status, text = admin_get(admin, "/stats")
    assert status == 200
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        for n, p in ports.items():
            # (sofamesh has no listener.<addr>.downstream_cx_total for tcp_proxy listeners)
            if name == f"listener.127.0.0.1_{p}.downstream_global_cx_overflow":
                out[f"{n}.downstream_global_cx_overflow"] = int(value)
        if name.startswith("overload.") and name.endswith(".pressure"):
            out[name] = int(value)
    return out


def _delta(now: dict, base: dict) -> dict:
    return {k: v - base.get(k, 0) for k, v in sorted(now.items())}


def _wait(admin: int, ports: dict, base: dict, key: str, want: int) -> dict:
    deadline = time.monotonic() + 5
    while True:
        d = _delta(_stats(admin, ports), base)
        if d.get(key) == want or time.monotonic() > deadline:
            return d
        time.sleep(0.05)


def _observe(kind: str, tmp_path, echo_port: int, workers: int) -> list:
    ports = {n: free_port() for n in NAMES}
    admin = free_port()
    boot = bootstrap(ports, admin, echo_port, 3)
    if kind == "envoy":
        proxy = ProxyProcess.envoy(envoy_binary(), boot, tmp_path / kind, concurrency=workers)
    else:
        proxy = ProxyProcess.sofamesh(
            sofamesh_command(), boot, tmp_path / kind, concurrency=workers
        )
    seen: list = []
    with proxy:
        time.sleep(0.3)  # the start-up check's connections are closed
        base = _stats(admin, ports)
        held = [_Conn(ports[n]) for n in ("a", "b", "a")]
        seen.append(("three of three", [c.probe() for c in held]))
        over = [_Conn(ports[n]) for n in ("a", "b")]
        seen.append(("over the limit", [c.probe() for c in over]))
        web = _Conn(ports["web"])
        seen.append(("http over the limit", _http(web)))
        free = _Conn(ports["free"])
        seen.append(("ignore_global_conn_limit", free.probe()))
        seen.append(("stats", _wait(admin, ports, base, "b.downstream_global_cx_overflow", 1)))
        held[1].close()
        time.sleep(0.3)  # the proxy sees the close
        again = _Conn(ports["b"])
        seen.append(("one closed, a new one", again.probe()))
        again.close()
        time.sleep(0.3)
        web2 = _Conn(ports["web"])
        seen.append(("http admitted", [_http(web2), _http(web2)]))
        again = _Conn(ports["b"])
        seen.append(("tcp over the limit", again.probe()))
        seen.append(("then over again", _Conn(ports["a"]).probe()))
        seen.append(("stats", _wait(admin, ports, base, "a.downstream_global_cx_overflow", 2)))
        for c in (*held, *over, free, again, web, web2):
            c.close()
    return seen


@pytest.mark.envoy
@pytest.mark.parametrize("workers", [1, 2])
def test_global_connection_limit_same_as_envoy(tmp_path, echo, workers):  # noqa: F811
    want = _observe("envoy", tmp_path, echo, workers)
    assert want[0] == ("three of three", ["echo", "echo", "echo"]), want
    assert want[1] == ("over the limit", ["closed at once", "closed at once"]), want
    assert want[2] == ("http over the limit", "closed"), want
    assert want[3] == ("ignore_global_conn_limit", "echo"), want
    assert want[6] == ("http admitted", ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]), want
    got = _observe("sofamesh", tmp_path, echo, workers)
    assert got == want, f"--- Envoy:\n{pprint.pformat(want)}\n--- sofamesh:\n{pprint.pformat(got)}"


def test_a_killed_workers_connections_are_given_back(tmp_path, echo):  # noqa: F811
    """Two workers, limit 3, three connections held; every worker killed (SIGKILL, so none
    releases anything) and restarted by the main process: the limit admits three new
    connections again, and refuses the fourth."""
    import os
    import signal

    ports = {n: free_port() for n in NAMES}
    admin = free_port()
    boot = bootstrap(ports, admin, echo, 3)
    with ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path, concurrency=2) as proxy:
        time.sleep(0.3)
        held = [_Conn(ports[n]) for n in ("a", "b", "a")]
        assert [c.probe() for c in held] == ["echo"] * 3
        assert _Conn(ports["b"]).probe() == "closed at once"
        kids = subprocess.run(
            ["pgrep", "-P", str(proxy.proc.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(kids) == 2, kids
        for pid in kids:
            os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:  # both restarted
            _, text = admin_get(admin, "/stats")
            restarted = (
                "server.worker_deaths: 2" in text and "listener_manager.workers_started: 2" in text
            )
            if restarted or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert restarted, text
        for c in held:
            c.close()
        time.sleep(0.3)
        fresh = [_Conn(ports[n]) for n in ("b", "a", "b")]
        assert [c.probe() for c in fresh] == ["echo"] * 3
        assert _Conn(ports["a"]).probe() == "closed at once"
        for c in fresh:
            c.close()
