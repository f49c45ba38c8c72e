"""HTTP active health checks: the same bootstrap through Envoy 1.40 and sofamesh (1 and 2
workers); a host answering 503 on its health path is taken out after one check (Envoy's
rule: an active failure ignores unhealthy_threshold), gets no traffic, shows
`/failed_active_hc` in /clusters and counts in `cluster.c.health_check.*`; it is put back
after healthy_threshold passing checks."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.health.helpers import (
    HealthUpstream,
    bootstrap,
    hc_stats,
    host_flags,
    wait_flags,
)
from tests.support.envoy import ProxyProcess, admin_get, admin_port, listener_ports

INTERVAL = 0.2
TIMEOUT = 0.5
HC = {
    "timeout": f"{TIMEOUT}s",
    "interval": f"{INTERVAL}s",
    "no_traffic_interval": f"{INTERVAL}s",
    "unhealthy_threshold": 3,
    "healthy_threshold": 2,
    "http_health_check": {"path": "/health"},
}


def _get(port: int, n: int) -> list[int]:
    """n requests, each on a new connection; the upstream ports that answered."""
    out = []
    for _ in range(n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/x")
        r = c.getresponse()
        body = r.read()
        c.close()
        out.append(int(body) if r.status == 200 else -r.status)
    return out


def run_scenario(start_proxy, tmp_path, workers: int = 1) -> dict:
    """workers > 1: the main process checks and pushes its verdicts to the workers, which
    apply them through the cluster's update_merge_window (1 s) each on its own clock: the
    scenario waits for them (admin shows the main process's view at once)."""
    ups = [HealthUpstream() for _ in range(3)]
    b = bootstrap([u.port for u in ups], HC)
    try:
        with start_proxy(b, tmp_path) as _p:
            a, lport = admin_port(b), listener_ports(b)[0]
            if workers > 1:
                for u in ups:
                    wait_flags(a, u.port, "healthy", 2.0)
            res: dict = {"start_flags": sorted(host_flags(a).values())}
            # the first checks ran before /ready (Envoy initializes the cluster after them)
            res["checked_before_ready"] = all(u.checks for u in ups)
            res["headers"] = ups[0].checks[0][1]
            assert sorted(set(_get(lport, 6))) == sorted(u.port for u in ups)
            bad = ups[1]
            bad.status = 503
            res["out_after"] = wait_flags(a, bad.port, "/failed_active_hc", 2.0)
            if workers > 1:  # every worker has applied it once its merge window has passed
                time.sleep(1.2)
            before = bad.served
            answered = _get(lport, 9)
            res["traffic_to_failed"] = bad.served - before
            res["answered"] = sorted(set(answered))
            res["mid_stats"] = hc_stats(a)
            res["mid_json"] = _json_health(a, [u.port for u in ups])
            t_back = time.monotonic()
            bad.status = 200
            res["back_after"] = wait_flags(a, bad.port, "healthy", 3.0)
            # passing checks it took (the last one may land just after the flag flips)
            res["passes_to_recover"] = bad.checks_since(t_back)
            res["end_flags"] = sorted(host_flags(a).values())
            # the load balancer sees it back once the cluster's update_merge_window (1 s)
            # since the previous change has passed (Envoy merges health updates)
            t = time.monotonic()
            while bad.port not in _get(lport, 3) and time.monotonic() - t < 3:
                time.sleep(0.02)
            res["traffic_back_after"] = time.monotonic() - t
            t = time.monotonic()
            while workers > 1 and hc_stats(a).get("membership_healthy") != 3:
                if time.monotonic() - t > 2.5:
                    break
                time.sleep(0.05)
            res["end_stats"] = hc_stats(a)
            # checks per host per second: once per sidecar, whatever the worker count
            t = time.monotonic()
            time.sleep(1.0)
            res["checks_per_s"] = max(u.checks_since(t) for u in ups)
            return res
    finally:
        for u in ups:
            u.close()


def _json_health(aport: int, ports: list[int]) -> list[dict]:
    """/clusters?format=json: each host's health_status, in the order of `ports`."""
    _, text = admin_get(aport, "/clusters?format=json")
    out = []
    for cs in json.loads(text)["cluster_statuses"]:
        if cs["name"] == "c":
            for h in cs["host_statuses"]:
                port = h["address"]["socket_address"]["port_value"]
                out.append((ports.index(port), h["health_status"]))
    return [hs for _, hs in sorted(out)]


def _envoy(b, tmp):
    return ProxyProcess.envoy(envoy_binary(), b, tmp / "envoy")


def _sofamesh(concurrency):
    def start(b, tmp):
        return ProxyProcess.sofamesh(sofamesh_command(), b, tmp / "sm", concurrency=concurrency)

    return start


def check(res: dict) -> None:
    assert res["start_flags"] == ["healthy"] * 3
    assert res["checked_before_ready"]
    assert res["out_after"] < INTERVAL + TIMEOUT + 0.3  # one check, not unhealthy_threshold
    assert res["traffic_to_failed"] == 0
    assert len(res["answered"]) == 2 and min(res["answered"]) > 0
    m = res["mid_stats"]
    assert m["health_check.failure"] >= 1
    assert m["health_check.network_failure"] == 0
    assert m["health_check.healthy"] == 2
    assert m["membership_healthy"] == 2
    assert m["membership_total"] == 3
    assert m["health_check.attempt"] >= m["health_check.success"] + m["health_check.failure"]
    # healthy_threshold 2: back after two passing checks, one interval apart
    assert INTERVAL * 0.8 < res["back_after"] < 3 * INTERVAL + 0.3
    assert 2 <= res["passes_to_recover"] <= 3
    assert res["end_flags"] == ["healthy"] * 3
    assert res["traffic_back_after"] < 1.5
    e = res["end_stats"]
    assert e["health_check.healthy"] == 3 and e["membership_healthy"] == 3
    assert e["health_check.passive_failure"] == 0 and e["health_check.verify_cluster"] == 0
    assert e["health_check.degraded"] == 0
    assert res["checks_per_s"] <= 1 / INTERVAL + 1


@pytest.mark.envoy
def test_http_health_check_same_as_envoy(tmp_path):
    env = run_scenario(_envoy, tmp_path)
    check(env)  # the scenario's expectations hold for Envoy itself
    sm = run_scenario(_sofamesh(1), tmp_path)
    check(sm)
    assert sm["headers"] == env["headers"]  # host: <cluster name>, user-agent: Envoy/HC
    names = {n for n in env["end_stats"] if n.startswith("health_check.")}
    assert names == {n for n in sm["end_stats"] if n.startswith("health_check.")}
    assert sm["mid_json"] == env["mid_json"]  # failed_active_health_check, eds HEALTHY
    assert abs(sm["out_after"] - env["out_after"]) < INTERVAL + 0.15
    assert abs(sm["back_after"] - env["back_after"]) < INTERVAL + 0.15
    assert abs(sm["traffic_back_after"] - env["traffic_back_after"]) < 0.3


def test_http_health_check_two_workers(tmp_path):
    """--concurrency 2: the main process checks once and every worker follows it."""
    check(run_scenario(_sofamesh(2), tmp_path, workers=2))


@pytest.mark.envoy
def test_event_log_same_as_envoy(tmp_path):
    """event_log_path: the same HealthCheckEvent JSON lines (timestamps aside) as Envoy's."""

    def events(start_proxy, name: str) -> list[dict]:
        ups = [HealthUpstream() for _ in range(2)]
        ups[0].status = 503
        path = tmp_path / f"{name}-events.log"
        b = bootstrap([u.port for u in ups], {**HC, "event_log_path": str(path)})
        try:
            with start_proxy(b, tmp_path):
                time.sleep(0.3)
            out = []
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                rec.pop("timestamp")
                port = rec["host"]["socket_address"]["port_value"]
                rec["host"]["socket_address"]["port_value"] = [u.port for u in ups].index(port)
                out.append(rec)
            return sorted(out, key=json.dumps)
        finally:
            for u in ups:
                u.close()

    env = events(_envoy, "envoy")
    assert len(env) == 2  # first checks: one failure (503), one added healthy
    assert events(_sofamesh(1), "sm") == env


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_restarted_worker_gets_current_health(tmp_path):
    """--concurrency 2: a worker killed and restarted gets the main process's current flags
    (its hc_hosts event is answered with them): no traffic to the failed host, none lost."""
    ups = [HealthUpstream() for _ in range(3)]
    b = bootstrap([u.port for u in ups], HC)
    try:
        with _sofamesh(2)(b, tmp_path) as p:
            a, lport = admin_port(b), listener_ports(b)[0]
            bad = ups[1]
            bad.status = 503
            wait_flags(a, bad.port, "/failed_active_hc", 2.0)
            kids = _children(p.pid)
            assert len(kids) == 2
            os.kill(kids[0], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                now = _children(p.pid)
                if len(now) == 2 and kids[0] not in now and hc_stats(a):
                    break
                time.sleep(0.05)
            time.sleep(0.5)  # the new worker serves
            before = bad.served
            answered = _get(lport, 30)
            assert bad.served == before
            assert sorted(set(answered)) == sorted(u.port for u in ups if u is not bad)
    finally:
        for u in ups:
            u.close()


@pytest.mark.envoy
def test_retriable_status_counts_to_threshold_same_as_envoy(tmp_path):
    """A status in retriable_statuses counts toward unhealthy_threshold (3 checks) instead of
    failing the host at once; /clusters and the stats as Envoy's."""
    hc = {
        **HC,
        "http_health_check": {
            "path": "/health",
            "retriable_statuses": [{"start": 429, "end": 430}],
        },
    }

    def run(start_proxy) -> tuple[float, dict, int]:
        ups = [HealthUpstream() for _ in range(3)]
        b = bootstrap([u.port for u in ups], hc)
        try:
            with start_proxy(b, tmp_path):
                a = admin_port(b)
                t = time.monotonic()
                ups[0].status = 429
                out = wait_flags(a, ups[0].port, "/failed_active_hc", 3.0)
                return out, hc_stats(a), ups[0].checks_since(t)
        finally:
            for u in ups:
                u.close()

    env_out, env_stats, env_checks = run(_envoy)
    sm_out, sm_stats, sm_checks = run(_sofamesh(1))
    assert 1.5 * INTERVAL < env_out < 3 * INTERVAL + 0.3  # three checks, not one
    assert abs(sm_out - env_out) < INTERVAL + 0.15
    assert env_checks in (3, 4) and sm_checks in (3, 4)  # the 4th: a slow admin read
    for s in (env_stats, sm_stats):
        assert s["health_check.network_failure"] == 0 and s["health_check.healthy"] == 2


@pytest.mark.envoy
def test_service_name_matcher_same_as_envoy(tmp_path):
    """service_name_matcher: a host whose x-envoy-upstream-healthchecked-cluster does not
    match fails at once; verify_cluster counts every checked answer."""
    hc = {
        **HC,
        "http_health_check": {"path": "/health", "service_name_matcher": {"prefix": "good"}},
    }

    def run(start_proxy) -> tuple[list[str], dict]:
        ups = [HealthUpstream() for _ in range(3)]
        ups[0].headers = {"x-envoy-upstream-healthchecked-cluster": "good-svc"}
        ups[1].headers = {"x-envoy-upstream-healthchecked-cluster": "bad-svc"}
        b = bootstrap([u.port for u in ups], hc)  # ups[2] sends none: no match either
        try:
            with start_proxy(b, tmp_path):
                a = admin_port(b)
                flags = host_flags(a)
                return [flags[u.port] for u in ups], hc_stats(a)
        finally:
            for u in ups:
                u.close()

    env_flags, env_stats = run(_envoy)
    sm_flags, sm_stats = run(_sofamesh(1))
    assert env_flags == ["healthy", "/failed_active_hc", "/failed_active_hc"]
    assert sm_flags == env_flags
    for s in (env_stats, sm_stats):
        assert s["health_check.verify_cluster"] >= 3
        assert s["health_check.healthy"] == 1
