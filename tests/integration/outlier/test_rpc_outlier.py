"""Outlier detection on Dubbo and Bolt clusters (sofamesh only: Envoy's dubbo_proxy reports
no request outcome to the outlier detector; sofamesh counts RPC error replies as 5xx and
connection failures and timeouts as local-origin failures, as Envoy's putResult maps them).
Real sofa-rpc-node providers and clients; a provider that answers every call with a Dubbo
error status, and a Bolt provider that goes away, are ejected after consecutive_5xx failed
calls, and every later call reaches the good provider until the ejection time is over."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from tests.conftest import free_port
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
from tests.support.envoy import admin_port, listener_ports

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


def test_dubbo_error_replies_eject_the_provider(tmp_path):
    bad = DubboErrorProvider()
    try:
        with NodeServer(dubbo=True, tag="d1") as d1:
            c = cluster("dubbo_up", [d1.port, bad.port])
            c["outlier_detection"] = OD
            lst = listener(
                "dubbo", free_port(), [dubbo_filter([route_config(SERVICE, "dubbo_up")])]
            )
            b = bootstrap([lst], [c])
            with sofamesh(b, tmp_path) as p:
                a, port = admin_port(b), listener_ports(b)[0]
                res = _who(port, 12, "dubbo")
                failed = [r for r in res if not r.get("ok")]
                # round robin: every second call reached the failing provider until its third
                # error reply ejected it; every call after that reached d1
                assert len(failed) == 3, res
                assert [r.get("result") for r in res[6:]] == ["d1"] * 6, res
                assert bad.calls == 3
                assert host_flags(a, "dubbo_up")[bad.port] == "/failed_outlier_check"
                s = stats(p)
                od = "cluster.dubbo_up.outlier_detection."
                assert s[od + "ejections_enforced_consecutive_5xx"] == 1
                assert s[od + "ejections_active"] == 1
                assert s["cluster.dubbo_up.membership_healthy"] == 1
                # back after base_ejection_time (on an interval tick), failing again
                t = time.monotonic()
                while host_flags(a, "dubbo_up")[bad.port] != "healthy":
                    assert time.monotonic() - t < 2.5
                    time.sleep(0.02)
                assert time.monotonic() - t > 0.4
                res = _who(port, 8, "dubbo")
                assert len([r for r in res if not r.get("ok")]) == 3, res
                assert bad.calls == 6
                assert stats(p)[od + "ejections_enforced_consecutive_5xx"] == 2
    finally:
        bad.close()


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
