"""The pilot over a config file's registries: a Dubbo provider in real ZooKeeper becomes a
cluster and a tcp_proxy listener that a real Envoy carries bytes through, merged with the
REST API's services; a bad registry entry stops the pilot with the field named."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from urllib.parse import quote_plus

import pytest
import yaml
from kazoo.client import KazooClient

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.pilot.conftest import PilotProcess, ads_bootstrap, http
from tests.support.envoy import ProxyProcess
from tests.support.servers import ZooKeeperServer


@pytest.fixture(scope="module")
def zookeeper():
    server = ZooKeeperServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


class EchoServer:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    def _echo(self, c):
        with c:
            while data := c.recv(65536):
                c.sendall(b"echo:" + data)

    def close(self):
        self.stopping = True
        self.sock.close()


def roundtrip(port: int, payload: bytes) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(payload)
            return s.recv(65536)
    except OSError:
        return None


def test_dubbo_provider_in_zookeeper_is_reachable_through_envoy(zookeeper, tmp_path):
    echo = EchoServer()
    root = f"/dubbo-{time.monotonic_ns()}"
    iface = "com.example.Greeter"
    url = (
        f"dubbo://127.0.0.1:{echo.port}/{iface}?anyhost=true&application=demo&dubbo=2.0.2"
        f"&interface={iface}&methods=sayHello&side=provider&timestamp=1"
    )
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start(timeout=15)
    # Envoy's tcp_proxy listener for the service port must not collide with the provider's own
    # socket on this one host: listeners bind service port + offset.
    listen = free_port()
    offset = listen - echo.port
    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "registries": [{"type": "zookeeper", "hosts": zookeeper.hosts, "root": root}],
                "tcp_port_offset": offset,
            }
        )
    )
    pilot = PilotProcess(tmp_path, extra=["--config", str(cfg)])
    admin = free_port()
    envoy = ProxyProcess.envoy(
        envoy_binary(), ads_bootstrap(pilot.xds_port, admin, delta=False), tmp_path / "envoy"
    )
    try:
        pilot.start()
        envoy.start()
        zk.create(f"{root}/{iface}/providers/{quote_plus(url)}", b"", ephemeral=True, makepath=True)
        cluster = f"outbound|{echo.port}||{iface}"
        pilot.wait_config("cds", lambda c: cluster in c, timeout=10)
        deadline = time.monotonic() + 10
        while (got := roundtrip(listen, b"hello dubbo")) != b"echo:hello dubbo":
            assert time.monotonic() < deadline, (
                f"no tcp path through Envoy: {got!r}\n{envoy.log_text()}"
            )
            time.sleep(0.1)
        # one model: the REST API's services sit beside ZooKeeper's
        pilot.register("web", "w1", address="127.0.0.1", port=8080)
        _, out = http("GET", pilot.api + "/v1/services")
        regs = {s["name"]: s["registries"] for s in out["services"]}
        assert regs == {iface: ["zookeeper"], "web": ["api"]}
        # the provider leaves ZooKeeper: its cluster and listener go
        zk.delete(f"{root}/{iface}", recursive=True)
        pilot.wait_config("cds", lambda c: cluster not in c, timeout=10)
        deadline = time.monotonic() + 5
        while roundtrip(listen, b"x") is not None:
            assert time.monotonic() < deadline, "listener still serving after the provider left"
            time.sleep(0.1)
    finally:
        envoy.stop()
        pilot.stop()
        zk.stop()
        zk.close()
        echo.close()


def test_bad_registry_entry_names_the_field(tmp_path):
    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(yaml.safe_dump({"registries": [{"type": "zookeeper"}]}))
    r = subprocess.run(
        [
            *sofamesh_command(),
            "pilot",
            "--config",
            str(cfg),
            "--xds-address",
            "127.0.0.1:0",
            "--api-address",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "registries[0].hosts" in r.stderr, r.stderr
    cfg.write_text("registries: {not: a list}\n")
    r = subprocess.run(
        [*sofamesh_command(), "pilot", "--config", str(cfg)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and "registries" in r.stderr
