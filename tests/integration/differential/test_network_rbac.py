"""envoy.filters.network.rbac in front of tcp_proxy: one bootstrap through Envoy 1.40 and
sofamesh, the same connections to both; what the client gets (echo or a closed connection)
and the rbac stats must agree."""

from __future__ import annotations

import pprint
import socket
import socketserver
import threading
import time

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get

RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _ip(kind: str, prefix: str, plen: int) -> dict:
    return {kind: {"address_prefix": prefix, "prefix_len": plen}}


def _listener(name: str, port: int, rules: dict, shadow: dict | None = None) -> dict:
    rbac: dict = {"@type": RBAC, "stat_prefix": name, "rules": rules}
    if shadow is not None:
        rbac["shadow_rules"] = shadow
        rbac["shadow_rules_stat_prefix"] = "shadow"
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.rbac", "typed_config": rbac},
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP,
                            "stat_prefix": f"tcp_{name}",
                            "cluster": "echo",
                        },
                    },
                ]
            }
        ],
    }


def _policy(permissions: list[dict], principals: list[dict]) -> dict:
    return {"permissions": permissions, "principals": principals}


def bootstrap(ports: dict[str, int], admin: int, echo: int) -> dict:
    any_ = [{"any": True}]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                # allowed: loopback source and this listener's own port
                _listener(
                    "allow_src",
                    ports["allow_src"],
                    {
                        "action": "ALLOW",
                        "policies": {
                            "loopback-to-me": _policy(
                                [
                                    {
                                        "and_rules": {
                                            "rules": [
                                                {"destination_port": ports["allow_src"]},
                                                _ip("destination_ip", "127.0.0.1", 32),
                                            ]
                                        }
                                    }
                                ],
                                [_ip("direct_remote_ip", "127.0.0.1", 32)],
                            )
                        },
                    },
                    shadow={"action": "DENY", "policies": {"all": _policy(any_, any_)}},
                ),
                # denied by source: loopback is in the DENY policy's range
                _listener(
                    "deny_src",
                    ports["deny_src"],
                    {
                        "action": "DENY",
                        "policies": {
                            "no-loopback": _policy(any_, [_ip("source_ip", "127.0.0.0", 8)])
                        },
                    },
                    shadow={
                        "action": "ALLOW",
                        "policies": {"remote": _policy(any_, [_ip("remote_ip", "127.0.0.0", 8)])},
                    },
                ),
                # denied by destination port: only a port range that is not this one
                _listener(
                    "deny_port",
                    ports["deny_port"],
                    {
                        "action": "ALLOW",
                        "policies": {
                            "low-ports": _policy(
                                [{"destination_port_range": {"start": 1, "end": 1024}}], any_
                            ),
                            "not-loopback": _policy(
                                any_, [{"not_id": _ip("direct_remote_ip", "127.0.0.0", 8)}]
                            ),
                        },
                    },
                ),
                # LOG: always allowed
                _listener(
                    "log", ports["log"], {"action": "LOG", "policies": {"all": _policy(any_, any_)}}
                ),
            ],
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": echo,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


NAMES = ("allow_src", "deny_src", "deny_port", "log")


def _exchange(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"hello rbac")
        got = b""
        try:
            while len(got) < 10:
                d = s.recv(100)
                if not d:
                    return f"closed after {got!r}"
                got += d
        except TimeoutError:
            return f"timeout after {got!r}"
        except ConnectionResetError:
            return f"reset after {got!r}"
        return f"echo {got!r}"


def _rbac_stats(admin: int) -> dict[str, int]:
    status, text = admin_get(admin, "/stats")
    assert status == 200
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if ".rbac." in name and value.strip().isdigit():
            out[name] = int(value)
    return out


@pytest.fixture(scope="module")
def echo():
    srv = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _observe(kind: str, tmp_path, echo_port: int) -> tuple[dict, dict]:
    ports = {n: free_port() for n in NAMES}
    admin = free_port()
    boot = bootstrap(ports, admin, echo_port)
    if kind == "envoy":
        proxy = ProxyProcess.envoy(envoy_binary(), boot, tmp_path / kind)
    else:
        proxy = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / kind)
    with proxy:
        # the start-up check connects to every listener and closes: each proxy checks (and
        # counts) that connection at its end of stream, maybe a little later
        time.sleep(0.5)
        before = _rbac_stats(admin)
        seen = {n: _exchange(ports[n]) for n in NAMES}
        time.sleep(0.2)
        after = _rbac_stats(admin)
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    return seen, {"names": sorted(after), "delta": delta}


@pytest.mark.envoy
def test_network_rbac_same_as_envoy(tmp_path, echo):
    want = _observe("envoy", tmp_path, echo)
    assert want[0] == {
        "allow_src": "echo b'hello rbac'",
        "deny_src": "closed after b''",
        "deny_port": "closed after b''",
        "log": "echo b'hello rbac'",
    }, want
    got = _observe("sofamesh", tmp_path, echo)
    assert got == want, f"--- Envoy:\n{pprint.pformat(want)}\n--- sofamesh:\n{pprint.pformat(got)}"
