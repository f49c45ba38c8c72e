"""Two `sofamesh mixer` processes with `--store etcd://...` (a real etcd) share one global
RLQS limit: sidecars split across them (sofamesh and Envoy 1.40, loaded unevenly) admit
together what the one limit allows, and a lightly loaded sidecar still gets its share."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import sofamesh_command
from tests.integration.mixer.test_global_quota import Pacer, _envoy, _listen, _sofamesh
from tests.support.browser import HeadlessChromium
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import EtcdServer


@pytest.fixture(scope="module")
def etcd():
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream():
    with RecordingUpstream(["a"]) as u:
        yield u


POLICY = "quotas:\n  - domain: mesh\n    bucket: {name: checkout}\n    requests_per_second: 100\n"


def _wait(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_mixers_one_limit(tmp_path, etcd, mixer_factory, upstream):
    rate, seconds = 100, 20.0
    store = f"etcd://{etcd.endpoint}/sofamesh-test-{time.monotonic_ns()}"
    a = mixer_factory(POLICY, extra=["--store", store])
    b = mixer_factory(POLICY, extra=["--store", store])
    app = upstream.ports["a"]
    # the heavy sidecar on one mixer, the two light ones on the other: each mixer alone
    # would admit 100/s for its own sidecars, 160/s in all
    heavy = _sofamesh(tmp_path, "heavy", app, a.grpc_port, "DENY_ALL").start()
    light = _sofamesh(tmp_path, "light", app, b.grpc_port, "DENY_ALL").start()
    envoy = _envoy(tmp_path, "envoy", app, b.grpc_port, "DENY_ALL").start()
    try:
        pacers = {
            "heavy": Pacer(_listen(heavy), 300, seconds),
            "light": Pacer(_listen(light), 30, seconds),
            "envoy": Pacer(_listen(envoy), 30, seconds),
        }
        for t in pacers.values():
            t.start()
        # each mixer learns of the other's sidecars through etcd
        _wait(lambda: a.metric("sofamesh_mixer_quota_remote_clients") == 2)
        _wait(lambda: b.metric("sofamesh_mixer_quota_remote_clients") == 1)
        time.sleep(seconds / 2 - 2)
        # mid-run, the shares the two mixers hold add up to the one limit (an assignment
        # that moved by less than 5% is kept, as with one mixer)
        shares = {
            "a": a.metric("sofamesh_mixer_quota_assigned"),
            "b": b.metric("sofamesh_mixer_quota_assigned"),
        }
        # mixer a's page lists the bucket's three sidecars, b's two as its peer's
        with HeadlessChromium(tmp_path) as browser:
            page = browser.open(f"http://127.0.0.1:{a.http_port}/")
            mixers = page.wait_for(
                "(() => { const r = [...document.querySelectorAll('#quota tr[data-client]')]"
                ".map(tr => tr.children[1].textContent); return r.length === 3 ? r : null; })()"
            )
            assert sum(m.endswith("(peer)") for m in mixers) == 2, mixers
            assert page.eval(
                "document.querySelector('#quota tr.bucket [data-col=limit]').textContent"
            ) == str(rate)
        for t in pacers.values():
            t.join(seconds + 30)
        for name, t in pacers.items():
            assert t.error is None, (name, t.error)
            assert set(t.codes) <= {200, 429}, (name, t.codes)
        admitted = {n: t.codes.get(200, 0) for n, t in pacers.items()}
        sent = {n: sum(t.codes.values()) for n, t in pacers.items()}
        total = sum(admitted.values())
        print(
            f"two mixers, one limit {rate}/s over {seconds:.0f} s: admitted {admitted} of "
            f"{sent}, total {total} (target {rate * seconds:.0f}); shares mid-run {shares}"
        )
        assert abs(total - rate * seconds) <= 0.1 * rate * seconds, (total, admitted, sent)
        for n in ("light", "envoy"):
            assert admitted[n] >= 0.8 * sent[n], (n, admitted, sent)
        assert admitted["heavy"] >= 0.7 * (rate - 60) * seconds, admitted
        assert abs(shares["a"] + shares["b"] - rate) <= 0.05 * rate + 2, shares
        assert a.metric("sofamesh_mixer_store_errors_total") == 0
        assert b.metric("sofamesh_mixer_store_errors_total") == 0
        assert "Traceback" not in a.log_path.read_text()  # both mixers log there
    finally:
        for p in (heavy, light, envoy):
            p.stop()


def test_a_stopped_mixers_sidecars_leave_the_split(tmp_path, etcd, mixer_factory, upstream):
    """A mixer that stops revokes its lease: the other one's sidecar gets the whole limit."""
    store = f"etcd://{etcd.endpoint}/sofamesh-test-{time.monotonic_ns()}"
    a = mixer_factory(POLICY, extra=["--store", store])
    b = mixer_factory(POLICY, extra=["--store", store])
    app = upstream.ports["a"]
    one = _sofamesh(tmp_path, "one", app, a.grpc_port, "DENY_ALL").start()
    two = _sofamesh(tmp_path, "two", app, b.grpc_port, "DENY_ALL").start()
    try:
        pacers = [Pacer(_listen(one), 200, 30.0), Pacer(_listen(two), 200, 30.0)]
        for t in pacers:
            t.start()
        _wait(lambda: a.metric("sofamesh_mixer_quota_assigned") == 50)
        _wait(lambda: b.metric("sofamesh_mixer_quota_assigned") == 50)
        b.stop()
        _wait(lambda: a.metric("sofamesh_mixer_quota_remote_clients") == 0)
        _wait(lambda: a.metric("sofamesh_mixer_quota_assigned") == 100)
    finally:
        for p in (one, two):
            p.stop()


def test_etcd_outage_mixers_keep_serving_and_catch_up(tmp_path, mixer_factory, upstream):
    """etcd gone: both mixers keep answering their sidecars with the split they last knew
    and count the failed writes; etcd back: a change on one mixer reaches the other."""
    etcd = EtcdServer()
    etcd.start()
    try:
        store = f"etcd://{etcd.endpoint}"
        a = mixer_factory(POLICY, extra=["--store", store])
        b = mixer_factory(POLICY, extra=["--store", store])
        app = upstream.ports["a"]
        one = _sofamesh(tmp_path, "one", app, a.grpc_port, "DENY_ALL").start()
        two = _sofamesh(tmp_path, "two", app, b.grpc_port, "DENY_ALL").start()
        try:
            pacers = [Pacer(_listen(one), 200, 40.0), Pacer(_listen(two), 200, 40.0)]
            for t in pacers:
                t.start()
            _wait(lambda: a.metric("sofamesh_mixer_quota_assigned") == 50)
            _wait(lambda: b.metric("sofamesh_mixer_quota_assigned") == 50)
            etcd.kill()
            reports = a.metric("sofamesh_mixer_quota_reports_total")
            _wait(lambda: a.metric("sofamesh_mixer_store_errors_total") > 0)
            _wait(lambda: b.metric("sofamesh_mixer_store_errors_total") > 0)
            # still serving its sidecar, with the split it knew
            _wait(lambda: a.metric("sofamesh_mixer_quota_reports_total") > reports + 2)
            assert a.metric("sofamesh_mixer_quota_assigned") == 50
            assert b.metric("sofamesh_mixer_quota_assigned") == 50
            etcd.start()
            # b's sidecar leaves; once b can write again, a's sidecar gets the whole limit
            two.stop()
            _wait(lambda: a.metric("sofamesh_mixer_quota_assigned") == 100, timeout=30)
            assert a.metric("sofamesh_mixer_quota_remote_clients") == 0
            assert "Traceback" not in a.log_path.read_text()  # warnings, no exceptions
        finally:
            for p in (one, two):
                p.stop()
    finally:
        etcd.stop()


def test_store_errors_are_clear(tmp_path):
    policy = tmp_path / "mixer.yaml"
    policy.write_text(POLICY)
    base = [*sofamesh_command(), "mixer", "--grpc-address", "127.0.0.1:0"]
    base += ["--http-address", "127.0.0.1:0", "--config", str(policy)]
    bad = subprocess.run(
        [*base, "--store", "zk://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "--store 'zk://127.0.0.1:1': expected etcd://host:port[/prefix]" in bad.stderr
    gone = subprocess.run(
        [*base, "--store", "etcd://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gone.returncode == 1
    assert "sofamesh mixer: cannot open store etcd://127.0.0.1:1" in gone.stderr
