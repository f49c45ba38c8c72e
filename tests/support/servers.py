"""Real registry servers for tests: ZooKeeper, etcd and a Consul dev agent, each on free
loopback ports with its own temp dir, started and killed by the test that needs it.

    with ZooKeeperServer() as zk:      # zk.hosts == "127.0.0.1:<port>"
        ...
    with EtcdServer() as etcd:         # etcd.endpoint == "127.0.0.1:<port>", etcd.url
        ...
    with ConsulAgent() as consul:      # consul.http_addr == "http://127.0.0.1:<port>"
        ...

Each class's `start()` waits until the server answers and raises (with the server's log)
if it does not; `stop()` kills the process group and removes the temp dir. Pytest fixtures
wrap them with `yield` inside `try/finally`, e.g.::

    @pytest.fixture(scope="module")
    def zookeeper():
        with ZooKeeperServer() as zk:
            yield zk
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, free_port

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"  # its manifest Class-Path names its deps
SLF4J_SIMPLE = "/usr/share/java/slf4j-simple.jar"  # logs to stderr (our log file)


class ServerError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    """`n` distinct free 127.0.0.1 ports, from this pytest worker's slice (`free_port`): not
    the kernel's ephemeral ones, which another worker's port-0 bind, or an outgoing
    connection, can be handed between our check and our server's bind (and Envoy and gRPC
    would share a port with SO_REUSEPORT silently)."""
    out: list[int] = []
    while len(out) < n:
        port = free_port()
        if port not in out:
            out.append(port)
    return out


class _Process:
    name = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"sofamesh-{self.name}-"))
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # its own process group: killed whole at stop()
            )

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _wait(self, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise ServerError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)

    def stop(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError


def _http_get(url: str, timeout: float = 1.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class ZooKeeperServer(_Process):
    """Standalone ZooKeeper (Debian's zookeeper 3.8 jars) on a free 127.0.0.1 port.
    tickTime 200ms, so sessions may be as short as 400ms (session-loss tests)."""

    name = "zookeeper"

    def __init__(self, tick_ms: int = 200) -> None:
        super().__init__()
        self.port = free_port()
        self.tick_ms = tick_ms

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if not os.path.exists(ZOOKEEPER_JAR):
            raise ServerError(f"{ZOOKEEPER_JAR} missing: run `bash ci/install.sh test`")
        (self.dir / "data").mkdir(exist_ok=True)
        cfg = self.dir / "zoo.cfg"
        cfg.write_text(
            f"tickTime={self.tick_ms}\n"
            f"dataDir={self.dir / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr\n"
            "maxClientCnxns=0\n"
        )
        cp = ZOOKEEPER_JAR
        if os.path.exists(SLF4J_SIMPLE):
            cp += ":" + SLF4J_SIMPLE
        java = shutil.which("java") or "/usr/bin/java"
        self._spawn(
            [
                java,
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.jmx.log4j.disable=true",
                "-cp",
                cp,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(cfg),
            ]
        )
        self._wait(self._ruok, 30.0)

    def _ruok(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
            s.sendall(b"ruok")
            return s.recv(4) == b"imok"


class EtcdServer(_Process):
    """Single-node etcd (Debian's etcd-server) with client and peer URLs on free ports."""

    name = "etcd"

    def __init__(self) -> None:
        super().__init__()
        self.port, self.peer_port = free_ports(2)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self._spawn(
            [
                etcd,
                "--name",
                "test",
                "--data-dir",
                str(self.dir / "data"),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"test={peer}",
                "--initial-cluster-state",
                "new",
                "--log-level",
                "warn",
            ],
            env={"ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")},
        )
        self._wait(
            lambda: json.loads(_http_get(self.url + "/health")).get("health") == "true", 30.0
        )


def consul_binary() -> str:
    """Consul 1.8.7 unpacked by ci/install.d/consul.sh, or $SOFAMESH_CONSUL."""
    path = os.environ.get("SOFAMESH_CONSUL") or str(ROOT / ".cache/consul/usr/bin/consul")
    if not os.access(path, os.X_OK):
        raise ServerError(f"consul not found at {path}: run `bash ci/install.d/consul.sh`")
    return path


class ConsulAgent(_Process):
    """`consul agent -dev` bound to 127.0.0.1: HTTP on a free port, DNS and gRPC off,
    serf and server RPC on free ports."""

    name = "consul"

    def __init__(self, hcl: tuple[str, ...] = (), token: str = "") -> None:
        """`hcl`: extra agent config (e.g. ACLs); `token`: the token readiness checks send."""
        super().__init__()
        self.port, self._serf_lan, self._serf_wan, self._server_port = free_ports(4)
        self.hcl = hcl
        self.token = token

    @property
    def http_addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._spawn(
            [
                consul_binary(),
                "agent",
                "-dev",
                "-node",
                "sofamesh-test",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
                "-http-port",
                str(self.port),
                "-dns-port",
                "-1",
                "-grpc-port",
                "-1",
                "-serf-lan-port",
                str(self._serf_lan),
                "-serf-wan-port",
                str(self._serf_wan),
                "-server-port",
                str(self._server_port),
                "-log-level",
                "warn",
                *(arg for h in self.hcl for arg in ("-hcl", h)),
            ]
        )
        self._wait(lambda: json.loads(self._get("/v1/status/leader")) != "", 30.0)
        # the agent answers before its node is in the catalog; wait for that too
        self._wait(lambda: bool(json.loads(self._get("/v1/catalog/nodes"))), 30.0)

    def _get(self, path: str) -> bytes:
        req = urllib.request.Request(self.http_addr + path)
        if self.token:
            req.add_header("X-Consul-Token", self.token)
        with urllib.request.urlopen(req, timeout=1.0) as r:  # loopback only
            return r.read()
