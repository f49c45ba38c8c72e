"""Priority failover driven by active health checks on another port, side by side with
Envoy 1.40 on the same static bootstrap: P0 of two hosts (a0, a1), P1 of one (b0); each
endpoint has `hostname` (sent upstream with `auto_host_rewrite`, shown in /clusters) and
`health_check_config.port_value` naming a separate health upstream, so the traffic ports
never see a check. Failing a0's health port spills 30% of requests to P1 (P0 at 50% x 1.4
= 70%), failing a1's too sends everything to P1, and P0 takes it all back when they pass."""

from __future__ import annotations

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.health.helpers import HealthUpstream, bootstrap, host_flags, wait_flags
from tests.support.envoy import ProxyProcess, admin_get, admin_port, listener_ports

NAMES = ("a0", "a1", "b0")
N = 400
TOL = 0.1
HC = {
    "timeout": "0.5s",
    "interval": "0.1s",
    "no_traffic_interval": "0.1s",
    "unhealthy_threshold": 1,
    "healthy_threshold": 1,
    "http_health_check": {"path": "/health"},
}


class TrafficUpstream:
    """Answers its name; records the Host header of each request and any /health probe."""

    def __init__(self, name: str) -> None:
        self.hosts: list[str] = []
        self.probes = 0
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path.startswith("/health"):
                    up.probes += 1
                up.hosts.append(self.headers.get("host", ""))
                body = name.encode()
                # one write: headers and body apart would wait out a delayed ACK each
                head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n\r\n"
                self.wfile.write(head.encode() + body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_bootstrap(traffic: dict, checks: dict) -> dict:
    b = bootstrap([], HC)
    c = b["static_resources"]["clusters"][0]
    c["common_lb_config"] = {"update_merge_window": "0s"}  # Envoy's default panic threshold

    def lle(prio: int, names):
        return {
            "locality": {"zone": f"z{prio}"},
            "priority": prio,
            "lb_endpoints": [
                {
                    "endpoint": {
                        "address": {
                            "socket_address": {
                                "address": "127.0.0.1",
                                "port_value": traffic[n].port,
                            }
                        },
                        "hostname": f"{n}.svc",
                        "health_check_config": {"port_value": checks[n].port},
                    }
                }
                for n in names
            ],
        }

    c["load_assignment"]["endpoints"] = [lle(0, ("a0", "a1")), lle(1, ("b0",))]
    route = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vh = route["typed_config"]["route_config"]["virtual_hosts"][0]
    vh["routes"][0]["route"]["auto_host_rewrite"] = True
    return b


def split(port: int, n: int = N) -> dict[str, int]:
    got: dict[str, int] = {}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(n):
            c.request("GET", "/x")
            r = c.getresponse()
            k = r.read().decode() if r.status == 200 else str(r.status)
            got[k] = got.get(k, 0) + 1
    finally:
        c.close()
    return got


def run(start_proxy, tmp_path) -> dict:
    traffic = {n: TrafficUpstream(n) for n in NAMES}
    checks = {n: HealthUpstream() for n in NAMES}
    b = make_bootstrap(traffic, checks)
    out: dict = {}
    try:
        with start_proxy(b, tmp_path):
            a, lport = admin_port(b), listener_ports(b)[0]
            port_of = {traffic[n].port: n for n in NAMES}
            _, text = admin_get(a, "/clusters")
            out["hosts"] = sorted(  # /clusters: hostname, locality and priority per host
                (port_of[int(p[1].rsplit(":", 1)[1])], p[2], p[3])
                for p in (line.split("::") for line in text.splitlines())
                if len(p) == 4
                and p[0] == "c"
                and p[2] in ("hostname", "region", "zone", "sub_zone", "priority")
            )
            _, js = admin_get(a, "/clusters?format=json")
            out["json"] = sorted(
                (port_of[h["address"]["socket_address"]["port_value"]], h.get("hostname"),
                 json.dumps(h.get("locality"), sort_keys=True), h.get("priority", 0))
                for cs in json.loads(js)["cluster_statuses"] if cs["name"] == "c"
                for h in cs["host_statuses"]
            )  # fmt: skip
            steps = []
            for down in ((), ("a0",), ("a0", "a1"), ()):
                for n in NAMES:
                    checks[n].status = 503 if n in down else 200
                for n in NAMES:
                    want = "/failed_active_hc" if n in down else "healthy"
                    wait_flags(a, traffic[n].port, want, 3.0)
                time.sleep(0.2)
                steps.append(split(lport))
            out["steps"] = steps
            out["host_headers"] = {n: sorted(set(traffic[n].hosts)) for n in NAMES}
            out["probes_on_traffic_port"] = sum(traffic[n].probes for n in NAMES)
            out["checked"] = all(checks[n].checks for n in NAMES)
            out["flags"] = sorted(host_flags(a).values())
    finally:
        for u in (*traffic.values(), *checks.values()):
            u.close()
    return out


def check(res: dict) -> None:
    prio = {"a0": 0, "a1": 0, "b0": 1}
    assert res["hosts"] == sorted(
        (n, k, v)
        for n in NAMES
        for k, v in (
            ("hostname", f"{n}.svc"),
            ("region", ""),
            ("zone", f"z{prio[n]}"),
            ("sub_zone", ""),
            ("priority", str(prio[n])),
        )
    )
    assert res["host_headers"] == {n: [f"{n}.svc"] for n in NAMES}
    assert res["probes_on_traffic_port"] == 0 and res["checked"]
    all_p0, half, all_p1, back = res["steps"]
    assert set(all_p0) == {"a0", "a1"} and set(back) == {"a0", "a1"}
    assert set(all_p1) == {"b0"}
    assert set(half) == {"a1", "b0"}
    assert abs(half["a1"] / N - 0.7) <= TOL, half


def _envoy(b, tmp):
    return ProxyProcess.envoy(envoy_binary(), b, tmp / "envoy")


def _sofamesh(concurrency):
    def start(b, tmp):
        return ProxyProcess.sofamesh(sofamesh_command(), b, tmp / "sm", concurrency=concurrency)

    return start


@pytest.mark.envoy
def test_health_checked_failover_as_envoy(tmp_path):
    env = run(_envoy, tmp_path)
    check(env)  # the expectations hold for Envoy itself
    sm = run(_sofamesh(1), tmp_path)
    check(sm)
    assert sm["hosts"] == env["hosts"]
    assert sm["json"] == env["json"]
    assert abs(sm["steps"][1]["a1"] - env["steps"][1]["a1"]) <= 1.5 * TOL * N


def test_health_checked_failover_two_workers(tmp_path):
    """--concurrency 2: the main process checks each host's health port for both workers."""
    check(run(_sofamesh(2), tmp_path))
