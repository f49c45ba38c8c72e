"""TCP active health checks on a tcp_proxy cluster (what Dubbo/Bolt/TCP upstreams use),
same bootstrap through Envoy 1.40 and sofamesh: a host that stops listening fails its
connects (network failures: out after unhealthy_threshold checks), gets no connections,
and is back after healthy_threshold passing checks once it listens again. Connect-only
checks and send/receive payload checks."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.health.helpers import (
    PingUpstream,
    bootstrap,
    hc_stats,
    host_flags,
    wait_flags,
)
from tests.support.envoy import ProxyProcess, admin_port, listener_ports

INTERVAL = 0.2
PAYLOAD = {
    "send": {"text": b"ping".hex()},
    "receive": [{"text": b"pong".hex()}],
}


def _hc(tcp: dict) -> dict:
    return {
        "timeout": "0.5s",
        "interval": f"{INTERVAL}s",
        "no_traffic_interval": f"{INTERVAL}s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
        "tcp_health_check": tcp,
    }


def _through(port: int, n: int) -> list[int]:
    """n connections through the proxy; the upstream port each reached (0: none)."""
    out = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"who")
            try:
                data = s.recv(100)
            except OSError:
                data = b""
        out.append(int(data.split()[1]) if data.startswith(b"port ") else 0)
    return out


def run(start_proxy, tmp_path, tcp: dict) -> dict:
    ups = [PingUpstream() for _ in range(3)]
    b = bootstrap([u.port for u in ups], _hc(tcp), listener="tcp")
    try:
        with start_proxy(b, tmp_path) as _p:
            a, lport = admin_port(b), listener_ports(b)[0]
            res: dict = {"start": sorted(host_flags(a).values())}
            assert sorted(set(_through(lport, 6))) == sorted(u.port for u in ups)
            bad = ups[2]
            bad.stop()
            res["out_after"] = wait_flags(a, bad.port, "/failed_active_hc", 3.0)
            res["mid"] = hc_stats(a)
            time.sleep(0.05)
            res["reached"] = sorted(set(_through(lport, 6)))
            bad.start()
            res["back_after"] = wait_flags(a, bad.port, "healthy", 3.0)
            t = time.monotonic()
            while bad.port not in _through(lport, 3) and time.monotonic() - t < 3:
                time.sleep(0.02)
            res["traffic_back"] = bad.port in _through(lport, 3) or time.monotonic() - t < 3
            res["end"] = hc_stats(a)
            return res
    finally:
        for u in ups:
            u.stop()


def check(res: dict, ports_ok: int = 2) -> None:
    assert res["start"] == ["healthy"] * 3
    # two network failures, one interval apart (unhealthy_threshold 2)
    assert INTERVAL * 0.5 < res["out_after"] < 3 * INTERVAL + 0.3
    m = res["mid"]
    assert m["health_check.network_failure"] >= 2
    assert m["health_check.failure"] == m["health_check.network_failure"]
    assert m["health_check.healthy"] == 2 and m["membership_healthy"] == 2
    assert len(res["reached"]) == ports_ok and 0 not in res["reached"]
    assert INTERVAL * 0.5 < res["back_after"] < 3 * INTERVAL + 0.3
    assert res["traffic_back"]
    assert res["end"]["health_check.healthy"] == 3


def _sofamesh(b, tmp):
    return ProxyProcess.sofamesh(sofamesh_command(), b, tmp / "sm")


def _envoy(b, tmp):
    return ProxyProcess.envoy(envoy_binary(), b, tmp / "envoy")


@pytest.mark.envoy
@pytest.mark.parametrize("tcp", [PAYLOAD, {}], ids=["payload", "connect-only"])
def test_tcp_health_check_same_as_envoy(tmp_path, tcp):
    env = run(_envoy, tmp_path, tcp)
    check(env)
    sm = run(_sofamesh, tmp_path, tcp)
    check(sm)
    assert abs(sm["out_after"] - env["out_after"]) < INTERVAL + 0.15
    assert abs(sm["back_after"] - env["back_after"]) < INTERVAL + 0.15


@pytest.mark.envoy
@pytest.mark.parametrize("proxy", ["envoy", "sofamesh"])
def test_tcp_receive_mismatch_is_a_failure(tmp_path, proxy):
    """An answer without the expected payload never matches: the check times out; hosts
    stay failed with /active_hc_timeout, in both proxies."""
    ups = [PingUpstream() for _ in range(3)]
    hc = _hc({"send": {"text": b"ping".hex()}, "receive": [{"text": b"nope".hex()}]})
    hc["timeout"] = "0.3s"
    b = bootstrap([u.port for u in ups], hc, listener="tcp")
    start = _envoy if proxy == "envoy" else _sofamesh
    try:
        with start(b, tmp_path):
            a = admin_port(b)
            assert sorted(host_flags(a).values()) == ["/failed_active_hc/active_hc_timeout"] * 3
            s = hc_stats(a)
            assert s["health_check.healthy"] == 0 and s["health_check.network_failure"] >= 3
            assert s["health_check.success"] == 0
    finally:
        for u in ups:
            u.stop()
