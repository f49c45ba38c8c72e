"""Outlier detection of a tcp_proxy cluster against Envoy 1.40: an upstream that stops
listening fails the connections routed to it (Envoy's tcp_proxy reports a refused connect
as a local-origin failure, a 503 without the split, and a connect as a success); it is
ejected after consecutive_5xx of them, later connections go to the others, the same stats."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.health.helpers import PingUpstream, bootstrap, host_flags
from tests.support.envoy import ProxyProcess, admin_port, listener_ports

from .test_http_outlier import od_stats

OD = {
    "consecutive_5xx": 3,
    "interval": "0.5s",
    "base_ejection_time": "1s",
    "max_ejection_percent": 50,
}


def ping(port: int) -> str:
    """One connection through the proxy: the upstream's answer to `port?`, or '' when the
    proxy closed it (its upstream connect failed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"who")
        try:
            return s.recv(64).decode()
        except OSError:
            return ""


def scenario(start_proxy, tmp_path, name: str) -> dict:
    ups = [PingUpstream() for _ in range(3)]
    ports = [u.port for u in ups]
    b = bootstrap(ports, {}, listener="tcp")
    del b["static_resources"]["clusters"][0]["health_checks"]
    b["static_resources"]["clusters"][0]["common_lb_config"] = {}
    b["static_resources"]["clusters"][0]["outlier_detection"] = OD
    res: dict = {}
    try:
        with start_proxy(b, tmp_path / name):
            a, lport = admin_port(b), listener_ports(b)[0]
            assert {ping(lport) for _ in range(6)} == {f"port {p}" for p in ports}
            ups[0].stop()
            fails = 0
            while host_flags(a)[ports[0]] != "/failed_outlier_check":
                assert fails < 10, "not ejected"
                fails += ping(lport) == ""
            res["fails"] = fails
            answers = {ping(lport) for _ in range(8)}
            res["after"] = sorted(
                ports.index(int(x.split()[1])) if x else -1 for x in answers
            )  # upstream indexes; -1: a failed connection
            res["stats"] = od_stats(a)
            res["flags"] = sorted(host_flags(a).values())
        return res
    finally:
        for u in ups:
            u.stop()


@pytest.mark.envoy
def test_tcp_proxy_refused_connects_eject_as_envoy(tmp_path):
    env = scenario(lambda b, d: ProxyProcess.envoy(envoy_binary(), b, d), tmp_path, "envoy")
    assert env["fails"] == 3 and env["after"] == [1, 2]
    sm = scenario(lambda b, d: ProxyProcess.sofamesh(sofamesh_command(), b, d), tmp_path, "sm")
    assert sm == env
