"""envoy.filters.http.rate_limit_quota in sofamesh against `sofamesh mixer`, and the shared
global quota of issue 10: two sofamesh sidecars and one Envoy 1.40, loaded unevenly, admit
together what the mixer's one limit allows."""

from __future__ import annotations

import http.client
import threading
import time

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.mixer.conftest import http_bootstrap
from tests.integration.mixer.test_mixer_envoy import rlqs_filter
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports


@pytest.fixture
def upstream():
    with RecordingUpstream(["a"]) as u:
        yield u


def _bootstrap(node: str, app: int, mixer: int, no_assignment: str | None) -> dict:
    admin, listen = free_ports(2)
    return http_bootstrap(
        node=node,
        admin=admin,
        listen=listen,
        app=app,
        mixer=mixer,
        http_filters=[rlqs_filter(no_assignment=no_assignment)],
    )


def _sofamesh(tmp_path, node: str, app: int, mixer: int, no_assignment: str | None = None):
    b = _bootstrap(node, app, mixer, no_assignment)
    # sofamesh's gRPC client speaks HTTP/2 itself; its HTTP pools do not yet (issue 9)
    for c in b["static_resources"]["clusters"]:
        c.pop("typed_extension_protocol_options", None)
    return ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / node)


def _envoy(tmp_path, node: str, app: int, mixer: int, no_assignment: str | None = None):
    return ProxyProcess.envoy(
        envoy_binary(), _bootstrap(node, app, mixer, no_assignment), tmp_path / node
    )


def _listen(p: ProxyProcess) -> int:
    return p.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"][
        "port_value"
    ]


class Pacer(threading.Thread):
    """Open-loop load: `rate` requests/s on one keep-alive connection for `seconds`."""

    def __init__(self, port: int, rate: float, seconds: float):
        super().__init__(daemon=True)
        self.port, self.rate, self.seconds = port, rate, seconds
        self.codes: dict[int, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            start = time.monotonic()
            i = 0
            while True:
                due = start + i / self.rate
                now = time.monotonic()
                if due - start >= self.seconds:
                    break
                if due > now:
                    time.sleep(due - now)
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                self.codes[r.status] = self.codes.get(r.status, 0) + 1
                i += 1
            conn.close()
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            self.error = e


def test_sofamesh_rlqs_enforces_the_mixers_limit(tmp_path, mixer_factory, upstream):
    rate = 20
    mixer = mixer_factory(
        f"quotas:\n  - domain: mesh\n    bucket: {{name: checkout}}\n"
        f"    requests_per_second: {rate}\n"
    )
    p = _sofamesh(tmp_path, "s1", upstream.ports["a"], mixer.grpc_port, "DENY_ALL").start()
    try:
        port = _listen(p)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        first = conn.getresponse()
        first.read()
        assert first.status == 429  # no_assignment_behavior DENY_ALL: before any assignment
        deadline = time.monotonic() + 10
        while mixer.metric("sofamesh_mixer_quota_assigned") == 0:
            assert time.monotonic() < deadline, "no RLQS report reached the mixer"
            time.sleep(0.05)
        time.sleep(1.0)
        codes = []
        start = time.monotonic()
        while time.monotonic() - start < 3.0:
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            codes.append(r.status)
        elapsed = time.monotonic() - start
        allowed = codes.count(200)
        print(f"sofamesh RLQS: {allowed} allowed of {len(codes)} in {elapsed:.2f} s at {rate}/s")
        assert set(codes) <= {200, 429}
        assert rate * elapsed * 0.8 <= allowed <= rate * elapsed + rate * 0.1 + 2
        # the sidecar reported what it saw: the mixer counted its denials too
        time.sleep(1.2)
        assert mixer.metric("sofamesh_mixer_quota_denied_total") >= codes.count(429) - 2 * rate
    finally:
        p.stop()


def test_sofamesh_rlqs_falls_back_when_the_assignment_expires(tmp_path, mixer_factory, upstream):
    """Mixer gone: the assignment lives its TTL, then no_assignment_behavior (ALLOW_ALL)."""
    mixer = mixer_factory(
        "quotas:\n  - bucket: {name: checkout}\n    requests_per_second: 5\n",
        extra=["--quota-ttl", "2"],
    )
    p = _sofamesh(tmp_path, "s1", upstream.ports["a"], mixer.grpc_port).start()
    try:
        port = _listen(p)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

        def burst(n: int) -> list[int]:
            out = []
            for _ in range(n):
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                out.append(r.status)
            return out

        burst(1)
        deadline = time.monotonic() + 10
        while mixer.metric("sofamesh_mixer_quota_assigned") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        assert burst(50).count(429) >= 40  # limited by the assignment
        mixer.stop()
        assert burst(50).count(429) >= 40  # still limited: within the assignment's TTL
        time.sleep(2.5)
        assert burst(50) == [200] * 50  # TTL passed: no_assignment_behavior (ALLOW_ALL)
    finally:
        p.stop()


def test_global_quota_two_sofamesh_one_envoy_uneven_load(tmp_path, mixer_factory, upstream):
    rate, seconds = 100, 20.0
    mixer = mixer_factory(
        f"quotas:\n  - domain: mesh\n    bucket: {{name: checkout}}\n"
        f"    requests_per_second: {rate}\n"
    )
    app, mport = upstream.ports["a"], mixer.grpc_port
    heavy = _sofamesh(tmp_path, "heavy", app, mport, "DENY_ALL").start()
    light = _sofamesh(tmp_path, "light", app, mport, "DENY_ALL").start()
    envoy = _envoy(tmp_path, "envoy", app, mport, "DENY_ALL").start()
    try:
        # heavy at 10x the others: demand 300 + 30 + 30 for a limit of 100: max-min fair
        # shares give the light ones all they ask (30 each), the heavy one the rest (40)
        pacers = {
            "heavy": Pacer(_listen(heavy), 300, seconds),
            "light": Pacer(_listen(light), 30, seconds),
            "envoy": Pacer(_listen(envoy), 30, seconds),
        }
        for t in pacers.values():
            t.start()
        for t in pacers.values():
            t.join(seconds + 30)
        for name, t in pacers.items():
            assert t.error is None, (name, t.error)
            assert set(t.codes) <= {200, 429}, (name, t.codes)
        admitted = {n: t.codes.get(200, 0) for n, t in pacers.items()}
        sent = {n: sum(t.codes.values()) for n, t in pacers.items()}
        total = sum(admitted.values())
        print(
            f"global quota {rate}/s over {seconds:.0f} s: admitted {admitted} of {sent}, "
            f"total {total} (target {rate * seconds:.0f})"
        )
        assert abs(total - rate * seconds) <= 0.1 * rate * seconds, (total, admitted, sent)
        # the lightly loaded ones get their share (what they ask for, 30/s), less the
        # first report's round trip
        for n in ("light", "envoy"):
            assert admitted[n] >= 0.8 * sent[n], (n, admitted, sent)
        assert admitted["heavy"] >= 0.7 * (rate - 60) * seconds, admitted
    finally:
        for p in (heavy, light, envoy):
            p.stop()


def test_sofamesh_workers_each_a_client_together_the_limit(tmp_path, mixer_factory, upstream):
    """--concurrency 2: each worker process is an RLQS client and an ALS stream of its own;
    together they admit the limit and report every request."""
    from tests.integration.mixer.conftest import wait_metric
    from tests.integration.mixer.test_sidecar_als import als_logger

    rate, seconds = 50, 10.0
    mixer = mixer_factory(
        f"quotas:\n  - bucket: {{name: checkout}}\n    requests_per_second: {rate}\n"
    )
    admin, listen = free_ports(2)
    b = http_bootstrap(
        node="workers",
        admin=admin,
        listen=listen,
        app=upstream.ports["a"],
        mixer=mixer.grpc_port,
        access_log=[als_logger("0.2s")],
        http_filters=[rlqs_filter(no_assignment="DENY_ALL")],
    )
    for c in b["static_resources"]["clusters"]:
        c.pop("typed_extension_protocol_options", None)
    p = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / "workers", concurrency=2).start()
    try:
        # 16 connections at 25/s (400/s): SO_REUSEPORT spreads connections at random, and with
        # 4 all of them landed on one worker 1 run in 8 (then only one RLQS client reported)
        pacers = [Pacer(listen, 25, seconds) for _ in range(16)]
        for t in pacers:
            t.start()
        for t in pacers:
            t.join(seconds + 30)
        codes: dict[int, int] = {}
        for t in pacers:
            assert t.error is None, t.error
            for k, v in t.codes.items():
                codes[k] = codes.get(k, 0) + v
        n = sum(codes.values())
        print(f"2 workers, limit {rate}/s, {seconds:.0f} s: {codes}")
        assert set(codes) <= {200, 429}
        assert abs(codes.get(200, 0) - rate * seconds) <= 0.1 * rate * seconds, codes
        assert wait_metric(mixer, "istio_requests_total", n, source="workers") == n
        # two streams (one per worker) share the bucket
        _, text = mixer.get("/metrics")
        shares = [
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("sofamesh_mixer_quota_assigned{")
        ]
        assert len(shares) == 2 and sum(shares) == rate, shares
    finally:
        p.stop()
