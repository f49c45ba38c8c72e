"""RPC integration helpers: real peers (sofa-rpc-node, dubbo-remoting, anthunder), a sofamesh
process with the network filters, bootstraps for Bolt/Dubbo/TCP listeners."""

from __future__ import annotations

import json
import select
import subprocess
import time
from pathlib import Path
from typing import Self

import pytest

from tests.conftest import ROOT, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get

PEERS = ROOT / "tests" / "peers"
BOLT_TYPE = "type.googleapis.com/sofamesh.filters.network.bolt_proxy.v1.BoltProxy"
DUBBO_TYPE = "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy"
TCP_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
SERVICE = "com.nodejs.test.TestService"


def node_ready() -> Path:
    if not (PEERS / "node_modules" / "sofa-rpc-node").is_dir():
        pytest.fail(
            "npm peers are not installed: run `bash ci/install.sh test` (ci/install.d/rpc-peers.sh)"
        )
    return PEERS


class NodeServer:
    """tests/peers/rpc_server.js: a sofa-rpc-node server (Bolt, or Dubbo) on 127.0.0.1:0."""

    def __init__(self, dubbo: bool = False, tag: str = "server"):
        self.argv = ["node", str(node_ready() / "rpc_server.js"), "--tag", tag]
        if dubbo:
            self.argv.append("--dubbo")
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> NodeServer:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=PEERS,
        )
        try:
            ready, _, _ = select.select([self.proc.stdout], [], [], 20)
            if not ready:
                raise RuntimeError("node rpc server did not start")
            line = self.proc.stdout.readline()
            self.port = json.loads(line)["port"]
        except BaseException:
            self.stop()  # __exit__ is not called when __enter__ raises
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def node_client(
    port: int, calls: list[dict], mode: str = "bolt", repeat: int = 1, timeout: float = 30
) -> list[dict]:
    """Runs tests/peers/rpc_client.js against 127.0.0.1:port; its per-call results."""
    argv = [
        "node",
        str(node_ready() / "rpc_client.js"),
        "--target",
        f"127.0.0.1:{port}",
        "--calls",
        json.dumps(calls),
        "--repeat",
        str(repeat),
    ]
    if mode == "dubbo":
        argv.append("--dubbo")
    elif mode == "bolt2":
        argv.append("--bolt2-crc")
    out = subprocess.run(
        argv, capture_output=True, timeout=timeout, cwd=PEERS, text=True, check=False
    )
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise AssertionError(
            f"client failed: {out.stdout[:500]!r}... {out.stderr[-2000:]!r}"
        ) from None
    assert isinstance(res, list), res
    return res


def cluster(name: str, ports: list[int], connect_timeout: str = "1s") -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": p}
                                }
                            }
                        }
                        for p in ports
                    ]
                }
            ],
        },
    }


def listener(name: str, port: int, filters: list[dict]) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": filters}],
    }


def dubbo_filter(routes: list[dict], stat_prefix: str = "dubbo_in") -> dict:
    return {
        "name": "envoy.filters.network.dubbo_proxy",
        "typed_config": {
            "@type": DUBBO_TYPE,
            "stat_prefix": stat_prefix,
            "protocol_type": "Dubbo",
            "serialization_type": "Hessian2",
            "route_config": routes,
        },
    }


def bolt_filter(routes: list[dict], stat_prefix: str = "bolt_in", **extra) -> dict:
    return {
        "name": "sofamesh.filters.network.bolt_proxy",
        "typed_config": {
            "@type": BOLT_TYPE,
            "stat_prefix": stat_prefix,
            "route_config": routes,
            **extra,
        },
    }


def hcm(cluster_name: str) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": "ingress_http",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }


def auto_filter(filters: list[dict]) -> dict:
    return {
        "name": "sofamesh.filters.network.auto",
        "typed_config": {
            "@type": "type.googleapis.com/sofamesh.filters.network.auto.v1.Auto",
            "filters": filters,
        },
    }


def tcp_filter(cluster_name: str, stat_prefix: str = "tcp_in") -> dict:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_TYPE, "stat_prefix": stat_prefix, "cluster": cluster_name},
    }


def route_config(interface: str, cluster_name: str, method: str | None = None, **kw) -> dict:
    match: dict = {}
    if method is not None:
        match["method"] = {"name": {"exact": method}}
    return {
        "name": f"rc_{interface}",
        "interface": interface,
        "routes": [{"match": match, "route": {"cluster": cluster_name}}],
        **kw,
    }


def bootstrap(listeners: list[dict], clusters: list[dict]) -> dict:
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def sofamesh(boot: dict, workdir: Path, taskset: str | None = None) -> ProxyProcess:
    argv = [*sofamesh_command(), "proxy", "--concurrency", "1", "-l", "warning"]
    return ProxyProcess("sofamesh", argv, boot, workdir, taskset=taskset)


def stats(proxy: ProxyProcess) -> dict[str, int]:
    port = int(proxy.bootstrap["admin"]["address"]["socket_address"]["port_value"])
    status, body = admin_get(port, "/stats")
    assert status == 200, body
    out = {}
    for line in body.splitlines():
        k, _, v = line.partition(": ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


def wait_stat(proxy: ProxyProcess, name: str, want: int, timeout: float = 3.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        v = stats(proxy).get(name, 0)
        if v >= want or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


class RawUpstream:
    """A loopback TCP server for failure cases: 'silent' reads and records, 'reset' closes a
    connection on its first bytes, 'echo' sends every byte back, 'stall' never reads,
    'garbage' answers every read with bytes that are no protocol's frame."""

    def __init__(self, mode: str):
        import socket
        import threading

        self.mode = mode
        self.received = bytearray()
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._conns: list = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        import threading

        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                if self._stop:  # kill() ran between accept() and here: die with the others
                    _reset(c)
                    return
                self.connections += 1
                self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c) -> None:
        if self.mode == "stall":
            return
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                with self._lock:
                    self.received += d
                if self.mode == "reset":
                    break
                if self.mode == "echo":
                    c.sendall(d)
                elif self.mode == "garbage":
                    c.sendall(b"\x07 not a frame")
        except OSError:
            pass
        finally:
            if self.mode != "silent":
                c.close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass

    def kill(self) -> None:
        """Dies: stops listening and resets every connection (RST, unread bytes dropped).
        A connection accepted while this runs is reset by the accept loop (it was missed
        once: the proxy kept a stalled upstream connection and the test waited forever)."""
        with self._lock:
            self._stop = True
            self._sock.close()
            for c in self._conns:
                _reset(c)


def _reset(c) -> None:
    import socket
    import struct

    try:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    except OSError:
        pass


class Blackhole:
    """A 127.0.0.1 port whose accept queue is full (listen backlog 0, filled, never
    accepted): a connect to it hangs, as to a host that drops SYNs."""

    def __enter__(self) -> Self:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(0)
        self.port = self._sock.getsockname()[1]
        self._fill = []
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", self.port))
            self._fill.append(c)
        return self

    def __exit__(self, *exc) -> None:
        for c in self._fill:
            c.close()
        self._sock.close()


def send_mutations(port: int, good: bytes, seed: int, prefix: bytes = b"", n: int = 60) -> None:
    """Sends `n` connections' worth of bad input to 127.0.0.1:port, each closed after: three
    copies of `good` with a few bytes changed, or (every third) `prefix` + random bytes."""
    import random
    import socket

    rng = random.Random(seed)
    for i in range(n):
        blob = bytearray(good * 3)
        for _ in range(rng.randrange(1, 8)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        if i % 3 == 0:
            blob = bytearray(prefix + rng.randbytes(rng.randrange(1, 200)))
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(bytes(blob))
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass


def raw_exchange(port: int, data: bytes, decoder, want: int, timeout: float = 3.0) -> list:
    """Sends `data` to 127.0.0.1:port and decodes replies until `want` frames (or timeout)."""
    import socket

    frames: list = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        deadline = time.monotonic() + timeout
        while len(frames) < want and time.monotonic() < deadline:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                d = s.recv(65536)
            except TimeoutError:
                break
            if not d:
                break
            frames += decoder.feed(d)
    return frames


def golden_hsf() -> bytes:
    path = ROOT / "tests" / "fixtures" / "protocols" / "hsf_mosn2018_req.bin"
    if not path.exists():
        pytest.fail(f"golden vector {path} is missing")
    return path.read_bytes()
