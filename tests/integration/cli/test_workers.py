"""`sofamesh proxy --concurrency 2`: two worker processes share one listener (SO_REUSEPORT),
both serve, admin sums their stats, a dead worker is restarted, and SIGTERM or
/quitquitquit stop them all."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port
from tests.integration.admin.helpers import (
    children,
    get,
    post,
    request,
    start_sofamesh,
    stop_with_workers,
    write_bootstrap,
)


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"hello"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def two_workers(tmp_path, upstream):
    admin = free_port()
    cfg = write_bootstrap(tmp_path / "b.yaml", admin=admin, port=0, upstream=upstream)
    proc = start_sofamesh(cfg, admin, "--concurrency", "2")
    try:
        yield proc, admin
    finally:
        stop_with_workers(proc)


def _stats(admin: int, timeout: float = 5.0) -> dict[str, int]:
    out = {}
    for line in request(admin, "GET", "/stats", timeout=timeout)[2].splitlines():
        k, _, v = line.partition(": ")
        if v.lstrip("-").isdigit():
            out[k] = int(v)
    return out


def upstream_port(admin: int) -> int:
    clusters = json.loads(get(admin, "/clusters?format=json")[1])["cluster_statuses"]
    return clusters[0]["host_statuses"][0]["address"]["socket_address"]["port_value"]


def _listener_port(admin: int) -> int:
    return int(get(admin, "/listeners")[1].strip().rsplit(":", 1)[1])


def _fetch(port: int) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/", headers={"connection": "close"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _wait(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_two_workers_both_serve_and_stats_sum(two_workers):
    proc, admin = two_workers
    port = _listener_port(admin)
    assert port > 0
    assert len(children(proc.pid)) == 2
    n = 60
    for _ in range(n):
        assert _fetch(port) == (200, b"hello")
    s = _stats(admin)
    assert s["server.concurrency"] == 2
    assert s["listener_manager.workers_started"] == 2
    assert s["http.ingress_http.downstream_rq_total"] == n
    assert s["http.ingress_http.downstream_rq_2xx"] == n
    per_worker = {
        k: v for k, v in s.items() if ".worker_" in k and k.endswith("downstream_cx_total")
    }
    assert len(per_worker) == 2, per_worker
    assert all(v > 0 for v in per_worker.values()), per_worker  # both workers accepted
    assert sum(per_worker.values()) == n
    clusters = json.loads(get(admin, "/clusters?format=json")[1])["cluster_statuses"]
    host = clusters[0]["host_statuses"][0]
    hstats = {x["name"]: int(x.get("value", 0)) for x in host["stats"]}  # uint64: a JSON string
    assert hstats["rq_total"] == n  # summed over both workers' upstream hosts
    assert f"backend::127.0.0.1:{upstream_port(admin)}::rq_total::{n}" in get(admin, "/clusters")[1]
    prom = get(admin, "/stats/prometheus")[1]
    assert (
        f'envoy_http_downstream_rq_total{{envoy_http_conn_manager_prefix="ingress_http"}} {n}'
    ) in prom.splitlines()
    assert post(admin, "/reset_counters") == (200, "OK\n")
    assert _stats(admin)["http.ingress_http.downstream_rq_total"] == 0


def test_dead_worker_is_restarted(two_workers):
    proc, admin = two_workers
    port = _listener_port(admin)
    victim = children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    _wait(lambda: _stats(admin).get("server.worker_deaths") == 1)
    _wait(
        lambda: (
            _stats(admin)["listener_manager.workers_started"] == 2
            and len(children(proc.pid)) == 2
            and victim not in children(proc.pid)
        )
    )
    for _ in range(10):
        assert _fetch(port) == (200, b"hello")
    assert get(admin, "/ready") == (200, "LIVE\n")


def test_quitquitquit_stops_all(two_workers):
    proc, admin = two_workers
    kids = children(proc.pid)
    assert post(admin, "/quitquitquit") == (200, "OK\n")
    assert proc.wait(15) == 0
    for k in kids:
        _wait(lambda k=k: not os.path.exists(f"/proc/{k}") or _zombie(k))


def test_sigterm_stops_all(two_workers):
    proc, _admin = two_workers
    kids = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    for k in kids:
        _wait(lambda k=k: not os.path.exists(f"/proc/{k}") or _zombie(k))


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_healthcheck_fail_reaches_workers(two_workers):
    _proc, admin = two_workers
    assert post(admin, "/healthcheck/fail") == (200, "OK\n")
    assert get(admin, "/ready") == (503, "DRAINING\n")
    assert _stats(admin)["server.live"] == 0
    assert post(admin, "/healthcheck/ok") == (200, "OK\n")
    assert get(admin, "/ready") == (200, "LIVE\n")


def test_workers_exit_when_the_main_process_dies(two_workers):
    proc, _admin = two_workers
    kids = children(proc.pid)
    assert len(kids) == 2
    proc.kill()  # no chance to stop them: they notice their socket closing
    proc.wait(10)
    for k in kids:
        _wait(lambda k=k: not os.path.exists(f"/proc/{k}") or _zombie(k))


def test_stopped_worker_is_reported_then_answers_again(two_workers):
    """A worker that does not answer (SIGSTOP) leaves a visible gap, not wrong sums; once it
    runs again, its late reply is skipped and the next answers line up."""
    proc, admin = two_workers
    port = _listener_port(admin)
    for _ in range(10):
        assert _fetch(port) == (200, b"hello")
    frozen = children(proc.pid)[0]
    os.kill(frozen, signal.SIGSTOP)
    try:
        s = _stats(admin, timeout=20)  # waits for the frozen worker's timeout
        assert s["server.worker_stats_unavailable"] == 1
        assert s["http.ingress_http.downstream_rq_total"] <= 10
    finally:
        os.kill(frozen, signal.SIGCONT)
    for _ in range(3):  # each answer is the right one, not the late one
        s = _stats(admin)
        assert s["http.ingress_http.downstream_rq_total"] == 10
        assert s["server.worker_stats_unavailable"] == 1
