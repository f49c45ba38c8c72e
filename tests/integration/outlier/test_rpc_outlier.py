"""Outlier detection on Dubbo and Bolt clusters. Dubbo against Envoy 1.40's dubbo_proxy:
a provider that answers every call with an error status (a real sofa-rpc-node provider
beside it) is ejected after consecutive_5xx error replies, in both proxies, with the same
flags and stats, and comes back after the ejection time. Bolt (no Envoy peer): a provider
that goes away (refused connections) or never answers (timeouts) is ejected; calls then
reach the live provider."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from tests.conftest import envoy_binary, free_port
from tests.integration.health.helpers import host_flags
from tests.integration.rpc.conftest import (
    SERVICE,
    NodeServer,
    bolt_filter,
    bootstrap,
    cluster,
    dubbo_filter,
    listener,
    node_client,
    route_config,
    sofamesh,
    stats,
)
from tests.support.envoy import ProxyProcess, admin_port, listener_ports

pytestmark = pytest.mark.timeout(120)

OD = {
    "consecutive_5xx": 3,
    "interval": "0.5s",
    "base_ejection_time": "1s",
    "max_ejection_percent": 50,
}


class DubboErrorProvider:
    """A Dubbo provider on 127.0.0.1 that answers every two-way request with status 80
    (SERVER_ERROR) and a Hessian string message; heartbeats are answered as such."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.calls = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        try:
            while data := c.recv(65536):
                buf += data
                while len(buf) >= 16:
                    flags, rid, blen = buf[2], buf[4:12], struct.unpack(">I", buf[12:16])[0]
                    if len(buf) < 16 + blen:
                        break
                    buf = buf[16 + blen :]
                    if not flags & 0x40:  # one-way
                        continue
                    if flags & 0x20:  # heartbeat: the same event back, status OK
                        c.sendall(b"\xda\xbb" + bytes([0x22, 20]) + rid + b"\x00\x00\x00\x01N")
                        continue
                    self.calls += 1
                    msg = b"provider failure"
                    body = bytes([len(msg)]) + msg  # Hessian 2 short string
                    head = b"\xda\xbb" + bytes([flags & 0x1F, 80]) + rid
                    c.sendall(head + struct.pack(">I", len(body)) + body)
        except OSError:
            pass
        finally:
            c.close()

    def close(self) -> None:
        self.sock.close()


def _who(port: int, n: int, mode: str) -> list[dict]:
    return node_client(port, [{"method": "who"}], mode=mode, repeat=n)


def dubbo_scenario(start_proxy, tmp_path) -> dict:
    bad = DubboErrorProvider()
    res: dict = {}
    try:
        with NodeServer(dubbo=True, tag="d1") as d1:
            c = cluster("dubbo_up", [d1.port, bad.port])
            c["outlier_detection"] = OD
            # (Envoy's dubbo_proxy wants a match: the method)
            rc = route_config(SERVICE, "dubbo_up", method="who")
            lst = listener("dubbo", free_port(), [dubbo_filter([rc])])
            b = bootstrap([lst], [c])
            with start_proxy(b, tmp_path) as p:
                a, port = admin_port(b), listener_ports(b)[0]
                res1 = _who(port, 12, "dubbo")
                # round robin: every second call reached the failing provider until its
                # third error reply ejected it; every call after that reached d1
                res["failed_1"] = len([r for r in res1 if not r.get("ok")])
                res["tail_1"] = [r.get("result") for r in res1[6:]]
                res["bad_calls_1"] = bad.calls
                res["flag_1"] = host_flags(a, "dubbo_up")[bad.port]
                od = "cluster.dubbo_up.outlier_detection."
                s = stats(p)
                res["stats_1"] = {k: v for k, v in s.items() if k.startswith(od)}
                res["healthy_1"] = s["cluster.dubbo_up.membership_healthy"]
                # back after base_ejection_time (on an interval tick), failing again
                t = time.monotonic()
                while host_flags(a, "dubbo_up")[bad.port] != "healthy":
                    assert time.monotonic() - t < 2.5
                    time.sleep(0.02)
                res["back_after"] = time.monotonic() - t
                res2 = _who(port, 8, "dubbo")
                res["failed_2"] = len([r for r in res2 if not r.get("ok")])
                res["bad_calls_2"] = bad.calls
                s = stats(p)
                res["stats_2"] = {k: v for k, v in s.items() if k.startswith(od)}
    finally:
        bad.close()
    return res


@pytest.mark.envoy
def test_dubbo_error_replies_eject_as_envoy(tmp_path):
    """Envoy 1.40's dubbo_proxy counts an error reply as a failed request: the same
    ejections, flags and stats in both proxies."""
    env = dubbo_scenario(lambda b, d: ProxyProcess.envoy(envoy_binary(), b, d / "envoy"), tmp_path)
    assert env["failed_1"] == 3 and env["tail_1"] == ["d1"] * 6 and env["bad_calls_1"] == 3
    assert env["flag_1"] == "/failed_outlier_check" and env["healthy_1"] == 1
    # Envoy ejects on its main thread and its worker learns of it by a post: a call sent
    # meanwhile can still reach the host (one more failure, now and then)
    assert env["failed_2"] in (3, 4) and env["bad_calls_2"] == 3 + env["failed_2"]
    sm = dubbo_scenario(lambda b, d: sofamesh(b, d / "sm"), tmp_path)
    assert sm["failed_2"] == 3 and sm["bad_calls_2"] == 6
    for k in ("failed_1", "tail_1", "bad_calls_1", "flag_1", "stats_1", "healthy_1", "stats_2"):
        assert sm[k] == env[k], k
    assert abs(env["back_after"] - sm["back_after"]) < 0.6


def test_bolt_provider_gone_is_ejected(tmp_path):
    with NodeServer(tag="b1") as b1, NodeServer(tag="b2") as b2:
        c = cluster("bolt_up", [b1.port, b2.port])
        c["outlier_detection"] = OD
        lst = listener("bolt", free_port(), [bolt_filter([route_config(SERVICE, "bolt_up")])])
        b = bootstrap([lst], [c])
        with sofamesh(b, tmp_path) as p:
            a, port = admin_port(b), listener_ports(b)[0]
            assert {r.get("result") for r in _who(port, 4, "bolt")} == {"b1", "b2"}
            b2.stop()
            time.sleep(0.2)
            res = _who(port, 12, "bolt")
            failed = [r for r in res if not r.get("ok")]
            assert len(failed) == 3, res  # refused connections: 503s to the detector
            assert [r.get("result") for r in res[6:]] == ["b1"] * 6, res
            assert host_flags(a, "bolt_up")[b2.port] == "/failed_outlier_check"
            s = stats(p)
            od = "cluster.bolt_up.outlier_detection."
            assert s[od + "ejections_detected_consecutive_5xx"] == 1
            assert s[od + "ejections_enforced_total"] == 1


class SilentProvider:
    """Accepts connections and reads, never answers: every call to it times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._drain, args=(c,), daemon=True).start()

    @staticmethod
    def _drain(c: socket.socket) -> None:
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_bolt_timeouts_eject_the_provider(tmp_path):
    silent = SilentProvider()
    try:
        with NodeServer(tag="b1") as b1:
            c = cluster("bolt_up", [b1.port, silent.port])
            c["outlier_detection"] = OD
            lst = listener("bolt", free_port(), [bolt_filter([route_config(SERVICE, "bolt_up")])])
            b = bootstrap([lst], [c])
            with sofamesh(b, tmp_path) as p:
                a, port = admin_port(b), listener_ports(b)[0]
                # the call's own timeout (400 ms, in the Bolt frame) is the proxy's deadline;
                # the client gives up at the same moment, so its next call may reach the
                # silent provider before the proxy's timeout of the third one has counted
                res = node_client(port, [{"method": "who", "timeout": 400}], "bolt", repeat=14)
                failed = [r for r in res if not r.get("ok")]
                assert 3 <= len(failed) <= 4, res
                assert [r.get("result") for r in res[8:]] == ["b1"] * 6, res
                assert host_flags(a, "bolt_up")[silent.port] == "/failed_outlier_check"
                time.sleep(0.5)  # the proxy's own timeout of a call the client gave up on
                s = stats(p)
                assert s["cluster.bolt_up.upstream_rq_timeout"] == len(failed)
                assert (
                    s["cluster.bolt_up.outlier_detection.ejections_enforced_consecutive_5xx"] == 1
                )
    finally:
        silent.close()


def dubbo_gone_scenario(start_proxy, tmp_path) -> dict:
    with NodeServer(dubbo=True, tag="d1") as d1, NodeServer(dubbo=True, tag="d2") as d2:
        c = cluster("dubbo_up", [d1.port, d2.port])
        c["outlier_detection"] = OD
        rc = route_config(SERVICE, "dubbo_up", method="who")
        b = bootstrap([listener("dubbo", free_port(), [dubbo_filter([rc])])], [c])
        with start_proxy(b, tmp_path) as p:
            a, port = admin_port(b), listener_ports(b)[0]
            assert {r.get("result") for r in _who(port, 4, "dubbo")} == {"d1", "d2"}
            d2.stop()
            time.sleep(0.2)
            res = _who(port, 12, "dubbo")
            od = "cluster.dubbo_up.outlier_detection."
            return {
                "failed": len([r for r in res if not r.get("ok")]),
                "tail": [r.get("result") for r in res[6:]],
                "flags": sorted(host_flags(a, "dubbo_up").values()),
                "stats": {k: v for k, v in stats(p).items() if k.startswith(od)},
            }


@pytest.mark.envoy
def test_dubbo_provider_gone_ejected_as_envoy(tmp_path):
    """A Dubbo provider that goes away: refused connections count as 503s (no split) in
    Envoy's dubbo_proxy and in sofamesh; the same ejection and stats."""
    env = dubbo_gone_scenario(
        lambda b, d: ProxyProcess.envoy(envoy_binary(), b, d / "envoy"), tmp_path
    )
    assert env["failed"] == 3 and env["tail"] == ["d1"] * 6
    assert env["flags"] == ["/failed_outlier_check", "healthy"]
    assert dubbo_gone_scenario(lambda b, d: sofamesh(b, d / "sm"), tmp_path) == env
