"""Outlier detection on an HTTP cluster: the same bootstrap through Envoy 1.40 and sofamesh.
Three upstreams; one starts answering 503: it is ejected after consecutive_5xx of them, gets
no traffic, shows `/failed_outlier_check`, and returns on the first interval tick after
base_ejection_time; failing again it is ejected for twice as long (base * ejections); then
it stops listening and connection failures eject it (a third time, three times as long). A
second failing host overflows max_ejection_percent. The outlier_detection.* stats and the
bootstrap's event log (JSON OutlierDetectionEvent lines) are compared with Envoy's."""

from __future__ import annotations

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.health.helpers import host_flags
from tests.support.envoy import ProxyProcess, admin_get, admin_port, listener_ports

INTERVAL = 0.5
BASE = 1.0
OD = {
    "consecutive_5xx": 3,
    "interval": f"{INTERVAL}s",
    "base_ejection_time": f"{BASE}s",
    "max_ejection_percent": 50,
}


class Upstream:
    """HTTP/1.1 on 127.0.0.1: answers `status` with its port as the body, closing each
    connection (no pooled connection outlives stop()); stop() stops listening (refused)."""

    def __init__(self) -> None:
        self.status = 200
        self.served = 0
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                up.served += 1
                body = str(up.port).encode()
                self.send_response(up.status)
                self.send_header("content-length", str(len(body)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def bootstrap(ports: list[int], od: dict, events: str) -> dict:
    aport, lport = free_port(), free_port()
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ing",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "v",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3"
                        ".Router"
                    },
                }
            ],
        },
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": aport}}},
        "cluster_manager": {"outlier_detection": {"event_log_path": events}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": lport}},
                    "filter_chains": [{"filters": [hcm]}],
                }
            ],
            "clusters": [
                {
                    "name": "c",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "outlier_detection": od,
                    "load_assignment": {
                        "cluster_name": "c",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": p,
                                                }
                                            }
                                        }
                                    }
                                    for p in ports
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def get(port: int) -> tuple[int, int]:
    """One request on a new connection: (status, answering upstream port or 0)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    c.request("GET", "/x")
    r = c.getresponse()
    body = r.read()
    c.close()
    try:
        return r.status, int(body)
    except ValueError:
        return r.status, 0


def od_stats(aport: int) -> dict[str, int]:
    _, text = admin_get(aport, "/stats")
    out = {}
    for line in text.splitlines():
        name, _, v = line.partition(": ")
        if name.startswith("cluster.c.outlier_detection.") or name in (
            "cluster.c.membership_healthy",
            "cluster.c.lb_healthy_panic",
        ):
            out[name[len("cluster.c.") :]] = int(v)
    return out


def fail_until_ejected(aport: int, lport: int, bad: int, limit: int = 30) -> tuple[int, int]:
    """Requests until host `bad` shows /failed_outlier_check: (its failures the client saw,
    requests sent)."""
    fails = sent = 0
    while host_flags(aport).get(bad) != "/failed_outlier_check":
        assert sent < limit, f"{bad} not ejected after {sent} requests"
        status, port = get(lport)
        sent += 1
        if status >= 500 and port in (bad, 0):
            fails += 1
    return fails, sent


def wait_back(aport: int, bad: int, timeout: float) -> float:
    t0 = time.monotonic()
    while host_flags(aport).get(bad) != "healthy":
        assert time.monotonic() - t0 < timeout, f"{bad} still ejected after {timeout}s"
        time.sleep(0.01)
    return time.monotonic() - t0


def scenario(start_proxy, tmp_path, name: str) -> dict:
    ups = [Upstream() for _ in range(3)]
    ports = [u.port for u in ups]
    events = tmp_path / f"{name}-outlier.log"
    b = bootstrap(ports, OD, str(events))
    res: dict = {}
    try:
        with start_proxy(b, tmp_path / name):
            a, lport = admin_port(b), listener_ports(b)[0]
            res["start"] = od_stats(a)
            assert {get(lport)[1] for _ in range(6)} == set(ports)
            bad = ups[0]
            bad.status = 503
            # 1: three 503s in a row eject it
            res["fails_1"], _ = fail_until_ejected(a, lport, bad.port)
            t_out = time.monotonic()
            served = bad.served
            answered = [get(lport) for _ in range(8)]
            res["served_while_out"] = bad.served - served
            res["answers_while_out"] = sorted({p for s, p in answered if s == 200})
            res["stats_1"] = od_stats(a)
            res["json_1"] = _json_health(a, ports)
            # back on the first interval tick after base_ejection_time
            wait_back(a, bad.port, BASE + 2 * INTERVAL)
            res["out_1"] = time.monotonic() - t_out
            # 2: still failing: ejected again, for base * 2
            res["fails_2"], _ = fail_until_ejected(a, lport, bad.port)
            t_out = time.monotonic()
            wait_back(a, bad.port, 2 * BASE + 2 * INTERVAL)
            res["out_2"] = time.monotonic() - t_out
            # 3: it stops listening: connection failures (503 to the client) eject it
            bad.stop()
            res["fails_3"], _ = fail_until_ejected(a, lport, bad.port)
            res["stats_3"] = od_stats(a)
            # a second failing host: ejecting it would exceed max_ejection_percent 50
            ups[1].status = 503
            served = ups[1].served
            while ups[1].served - served < 3:
                get(lport)
            time.sleep(0.1)
            res["flags_overflow"] = host_flags(a)[ups[1].port]
            res["stats_overflow"] = od_stats(a)
            time.sleep(0.3)  # Envoy flushes its log file on a timer
        res["events"] = _events(events, ports)
        return res
    finally:
        for u in ups:
            u.stop()


def _json_health(aport: int, ports: list[int]) -> list[dict]:
    _, text = admin_get(aport, "/clusters?format=json")
    out = []
    for cs in json.loads(text)["cluster_statuses"]:
        if cs["name"] == "c":
            for h in cs["host_statuses"]:
                port = h["address"]["socket_address"]["port_value"]
                out.append((ports.index(port), h["health_status"]))
    return [hs for _, hs in sorted(out)]


def _events(path, ports: list[int]) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        assert ev.pop("timestamp").endswith("Z")
        ev["upstream_url"] = ports.index(int(ev["upstream_url"].rsplit(":", 1)[1]))
        out.append(ev)
    return out


def check(res: dict) -> None:
    """What Envoy 1.40 does (the test holds for Envoy itself)."""
    assert res["fails_1"] == 3 and res["fails_2"] == 3 and res["fails_3"] == 3
    assert res["served_while_out"] == 0 and len(res["answers_while_out"]) == 2
    s1 = res["stats_1"]
    assert s1["outlier_detection.ejections_active"] == 1
    assert s1["outlier_detection.ejections_enforced_consecutive_5xx"] == 1
    assert s1["outlier_detection.ejections_detected_consecutive_5xx"] == 1
    assert s1["membership_healthy"] == 2
    assert res["json_1"][0].get("failed_outlier_check") is True
    assert BASE - 0.05 <= res["out_1"] <= BASE + INTERVAL + 0.3
    assert 2 * BASE - 0.05 <= res["out_2"] <= 2 * BASE + INTERVAL + 0.3
    assert res["flags_overflow"] == "healthy"
    so = res["stats_overflow"]
    assert so["outlier_detection.ejections_overflow"] >= 1
    assert so["outlier_detection.ejections_active"] == 1


@pytest.mark.envoy
def test_outlier_ejection_same_as_envoy(tmp_path):
    env = scenario(lambda b, d: ProxyProcess.envoy(envoy_binary(), b, d), tmp_path, "envoy")
    check(env)
    sm = scenario(lambda b, d: ProxyProcess.sofamesh(sofamesh_command(), b, d), tmp_path, "sm")
    check(sm)
    for k in ("start", "stats_1", "stats_3", "stats_overflow"):
        assert sm[k] == env[k], k
    assert sm["json_1"] == env["json_1"]
    for k in ("fails_1", "fails_2", "fails_3", "served_while_out"):
        assert sm[k] == env[k], k
    assert abs(sm["out_1"] - env["out_1"]) < INTERVAL + 0.2
    assert abs(sm["out_2"] - env["out_2"]) < INTERVAL + 0.2

    def strip(evs):  # whole seconds since the last action may round either way
        return [{k: v for k, v in e.items() if k != "secs_since_last_action"} for e in evs]

    assert strip(sm["events"]) == strip(env["events"])
    assert [sorted(e) for e in sm["events"]] == [sorted(e) for e in env["events"]]


RATES = {
    "consecutive_5xx": 1000,
    "consecutive_gateway_failure": 1000,
    "interval": "1s",
    "base_ejection_time": "3s",
    "max_ejection_percent": 100,
    "success_rate_minimum_hosts": 3,
    "success_rate_request_volume": 10,
    "success_rate_stdev_factor": 1000,
    "enforcing_success_rate": 0,  # detected and logged, not enforced
    "failure_percentage_minimum_hosts": 3,
    "failure_percentage_request_volume": 10,
    "failure_percentage_threshold": 50,
    "enforcing_failure_percentage": 100,
}


def rates_scenario(start_proxy, tmp_path, name: str) -> dict:
    """A host answering only 503s, below every consecutive threshold: over one interval
    with enough requests its success rate (0 against 100 and 100: under mean - 1 stdev) is
    detected, not enforced, and its failure percentage (100 >= 50) ejects it."""
    ups = [Upstream() for _ in range(3)]
    ports = [u.port for u in ups]
    events = tmp_path / f"{name}-rates.log"
    b = bootstrap(ports, RATES, str(events))
    res: dict = {}
    try:
        with start_proxy(b, tmp_path / name):
            a, lport = admin_port(b), listener_ports(b)[0]
            ups[0].status = 503
            t0 = time.monotonic()
            while host_flags(a).get(ports[0]) != "/failed_outlier_check":
                assert time.monotonic() - t0 < 5, "not ejected by failure percentage"
                for _ in range(6):
                    get(lport)
            res["stats"] = od_stats(a)
            _, text = admin_get(a, "/clusters")
            res["rates"] = sorted(
                (ports.index(int(p.split("::")[1].rsplit(":", 1)[1])), p.split("::")[3])
                for p in text.splitlines()
                if p.split("::")[2:3] == ["success_rate"]
            )
            time.sleep(0.3)
        res["events"] = _events(events, ports)
        return res
    finally:
        for u in ups:
            u.stop()


SPLIT = {
    "split_external_local_origin_errors": True,
    "consecutive_local_origin_failure": 3,
    "consecutive_gateway_failure": 2,  # enforcing_consecutive_gateway_failure: 0 (default)
    "consecutive_5xx": 1000,
    "interval": "0.5s",
    "base_ejection_time": "1s",
    "max_ejection_percent": 100,
}


def split_scenario(start_proxy, tmp_path, name: str) -> dict:
    """split_external_local_origin_errors: a 500 counts as a gateway failure (a failed
    request is a 503 to the detector), detected and not enforced; connection failures eject
    by consecutive_local_origin_failure."""
    ups = [Upstream() for _ in range(3)]
    ports = [u.port for u in ups]
    events = tmp_path / f"{name}-split.log"
    b = bootstrap(ports, SPLIT, str(events))
    res: dict = {}
    try:
        with start_proxy(b, tmp_path / name):
            a, lport = admin_port(b), listener_ports(b)[0]
            ups[0].status = 500
            while ups[0].served < 2:
                get(lport)
            ups[0].status = 200
            time.sleep(0.1)
            res["stats_500"] = od_stats(a)
            res["flags_500"] = host_flags(a)[ports[0]]
            ups[1].stop()
            res["fails"], _ = fail_until_ejected(a, lport, ports[1])
            res["stats_lo"] = od_stats(a)
            time.sleep(0.3)
        res["events"] = _events(events, ports)
        return res
    finally:
        for u in ups:
            u.stop()


@pytest.mark.envoy
def test_rates_and_split_same_as_envoy(tmp_path):
    envoy = lambda b, d: ProxyProcess.envoy(envoy_binary(), b, d)
    sm = lambda b, d: ProxyProcess.sofamesh(sofamesh_command(), b, d)
    env_r, sm_r = rates_scenario(envoy, tmp_path, "envoy"), rates_scenario(sm, tmp_path, "sm")
    s = env_r["stats"]
    assert s["outlier_detection.ejections_enforced_failure_percentage"] == 1
    assert s["outlier_detection.ejections_detected_success_rate"] >= 1
    assert s["outlier_detection.ejections_enforced_success_rate"] == 0
    assert sm_r["stats"] == env_r["stats"]
    assert sm_r["rates"] == env_r["rates"]
    strip = lambda evs: [{k: v for k, v in e.items() if k != "secs_since_last_action"} for e in evs]
    assert strip(sm_r["events"]) == strip(env_r["events"])

    env_s, sm_s = split_scenario(envoy, tmp_path, "envoy"), split_scenario(sm, tmp_path, "sm")
    s = env_s["stats_lo"]
    assert s["outlier_detection.ejections_enforced_consecutive_local_origin_failure"] == 1
    assert env_s["fails"] == 3
    assert env_s["flags_500"] == "healthy"
    for k in ("stats_500", "flags_500", "fails", "stats_lo"):
        assert sm_s[k] == env_s[k], k
    assert strip(sm_s["events"]) == strip(env_s["events"])


def test_two_workers_one_detector(tmp_path):
    """--concurrency 2: the main process decides (Envoy's detector lives on its main
    thread): each worker counts the consecutive failures of the requests it proxies and
    tells the main process when one reaches consecutive_5xx; the host is ejected once, from
    every worker, with one set of stats and one event, and returns after the ejection
    time. Clients see 3 to 6 failures (one worker's run of 3 is enough; the other may have
    seen up to 2 of its own)."""
    ups = [Upstream() for _ in range(3)]
    ports = [u.port for u in ups]
    events = tmp_path / "events.log"
    b = bootstrap(ports, OD, str(events))
    try:
        proc = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / "sm", concurrency=2)
        with proc:
            a, lport = admin_port(b), listener_ports(b)[0]
            bad = ups[0]
            bad.status = 503
            fails = sent = 0
            while host_flags(a).get(bad.port) != "/failed_outlier_check":
                assert sent < 60, "the failing host was not ejected"
                status, _ = get(lport)
                sent += 1
                fails += status == 503
            assert 3 <= fails <= 6
            time.sleep(0.05)
            served = bad.served
            for _ in range(12):  # both workers: new connections land on either
                assert get(lport)[0] == 200
            assert bad.served == served
            s = od_stats(a)
            assert s["outlier_detection.ejections_enforced_consecutive_5xx"] == 1
            assert s["outlier_detection.ejections_active"] == 1
            assert s["membership_healthy"] == 2
            bad.status = 200
            t = time.monotonic()
            while host_flags(a).get(bad.port) != "healthy":
                assert time.monotonic() - t < BASE + INTERVAL + 0.5, "not back"
                time.sleep(0.02)
            while bad.served == served:
                get(lport)
            assert od_stats(a)["outlier_detection.ejections_active"] == 0
        evs = _events(events, ports)
        assert [(e["action"], e["type"], e["upstream_url"]) for e in evs] == [
            ("EJECT", "CONSECUTIVE_5XX", 0),
            ("UNEJECT", "CONSECUTIVE_5XX", 0),
        ]
    finally:
        for u in ups:
            u.stop()


def retry_scenario(start_proxy, tmp_path, name: str) -> dict:
    """Istio's retries (retry_on 5xx, 2 retries): every client request succeeds on another
    host, and each 503 the failing host answers still counts: it is ejected at its third."""
    ups = [Upstream() for _ in range(3)]
    ports = [u.port for u in ups]
    b = bootstrap(ports, OD, str(tmp_path / f"{name}-retry.log"))
    vh = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]
    vh["routes"][0]["route"]["retry_policy"] = {"retry_on": "5xx", "num_retries": 2}
    res: dict = {}
    try:
        with start_proxy(b, tmp_path / name):
            a, lport = admin_port(b), listener_ports(b)[0]
            ups[0].status = 503
            statuses = [get(lport)[0] for _ in range(15)]
            res["statuses"] = sorted(set(statuses))
            res["bad_served"] = ups[0].served
            res["flags"] = host_flags(a)[ports[0]]
            res["stats"] = od_stats(a)
            _, text = admin_get(a, "/stats")
            res["retries"] = [
                ln for ln in text.splitlines() if ln.startswith("cluster.c.upstream_rq_retry:")
            ]
        return res
    finally:
        for u in ups:
            u.stop()


@pytest.mark.envoy
def test_retried_failures_count_as_envoy(tmp_path):
    env = retry_scenario(lambda b, d: ProxyProcess.envoy(envoy_binary(), b, d), tmp_path, "envoy")
    assert env["statuses"] == [200] and env["bad_served"] == 3
    assert env["flags"] == "/failed_outlier_check"
    sm = retry_scenario(
        lambda b, d: ProxyProcess.sofamesh(sofamesh_command(), b, d), tmp_path, "sm"
    )
    assert sm == env
