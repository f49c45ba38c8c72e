"""Interop with a real Dubbo implementation (Apache dubbo-python, Triple protocol, ZooKeeper
registry) through `sofamesh pilot` and real Envoy:

- a dubbo-python provider registers itself in ZooKeeper; the pilot turns it into a gRPC
  cluster; a gRPC client calls it through Envoy's outbound listener by service name;
- a mesh service registered through the pilot's REST API is exported into ZooKeeper, and a
  dubbo-python consumer finds it there and calls it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from kazoo.client import KazooClient

from tests.conftest import ROOT, envoy_binary, free_port
from tests.integration.pilot.conftest import PilotProcess, ads_bootstrap
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.wait import wait_until

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

SERVICE = "org.apache.dubbo.samples.Greeter"


class DubboProvider:
    def __init__(self, zk: str, port: int, service: str, log_path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.dubbo_peer",
                    "provider",
                    zk,
                    str(port),
                    service,
                ],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(
                lambda: b"READY" in log_path.read_bytes() or self.proc.poll() is not None,
                30,
                "dubbo-python provider",
            )
        except BaseException:
            self.stop()  # not ready in time: the test never gets an object to stop
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"provider exited: {log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def test_dubbo_python_provider_called_through_envoy(zookeeper, tmp_path):
    port = free_port()
    root = "/dubbo"  # dubbo-python's fixed root
    provider = DubboProvider(zookeeper.hosts, port, SERVICE, tmp_path / "provider.log")
    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(
        json.dumps({"registries": [{"type": "zookeeper", "hosts": zookeeper.hosts, "root": root}]})
    )
    pilot = PilotProcess(tmp_path / "pilot", extra=["--config", str(cfg)])
    admin = free_port()
    envoy = ProxyProcess.envoy(
        envoy_binary(), ads_bootstrap(pilot.xds_port, admin, True), tmp_path / "envoy"
    )
    cluster = f"outbound|{port}||{SERVICE}"
    try:
        pilot.start()
        envoy.start()

        def endpoint_line() -> str | None:
            _, text = admin_get(admin, "/clusters")
            prefix = f"{cluster}::127.0.0.1:{port}::health_flags::"
            return next((ln for ln in text.splitlines() if ln.startswith(prefix)), None)

        line = wait_until(endpoint_line, 15, f"{cluster} in Envoy /clusters")
        assert line.endswith("::healthy"), line

        # a gRPC client (Triple is gRPC on the wire) calls the service by name via Envoy
        with grpc.insecure_channel(
            f"127.0.0.1:{pilot.outbound_port}", options=[("grpc.default_authority", SERVICE)]
        ) as ch:
            greet = ch.unary_unary(f"/{SERVICE}/greet")

            def call() -> bytes | None:
                try:
                    return greet(b"from the mesh", timeout=2)
                except grpc.RpcError:
                    return None

            assert wait_until(call, 10, "a call through Envoy") == b"hello from the mesh"

        # the provider process dies: its ephemeral node and Envoy's endpoint go
        provider.stop()
        wait_until(lambda: endpoint_line() is None, 15, "endpoint removal")
    finally:
        envoy.stop()
        pilot.stop()
        provider.stop()


def test_dubbo_python_consumer_finds_exported_mesh_service(zookeeper, tmp_path):
    port = free_port()
    # a Triple server that is not in ZooKeeper: it joins the mesh through the REST API
    provider = DubboProvider("-", port, SERVICE, tmp_path / "provider.log")
    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(
        json.dumps(
            {
                "registries": [
                    {
                        "type": "zookeeper",
                        "hosts": zookeeper.hosts,
                        "root": "/dubbo",
                        "export": True,
                        "export_protocols": ["dubbo", "grpc"],
                    }
                ]
            }
        )
    )
    pilot = PilotProcess(tmp_path / "pilot", extra=["--config", str(cfg)])
    try:
        pilot.start()
        pilot.register(
            SERVICE, "greeter-1", address="127.0.0.1", port=port, protocol="grpc", ttl_seconds=60
        )
        # the export is asynchronous (debounce, then a ZooKeeper write), and the consumer reads
        # the providers once: started too early it found none ("No provider available")
        zk = KazooClient(hosts=zookeeper.hosts, timeout=4.0)
        zk.start(timeout=10)
        try:
            providers = f"/dubbo/{SERVICE}/providers"
            wait_until(
                lambda: zk.exists(providers) and zk.get_children(providers),
                10,
                f"the pilot's export under {providers}",
            )
        finally:
            zk.stop()
            zk.close()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.support.dubbo_peer",
                "consumer",
                zookeeper.hosts,
                SERVICE,
                "dubbo consumer",
            ],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        text = out.stdout.decode(errors="replace")
        assert "RESULT b'hello dubbo consumer'" in text, (text[-3000:], out.stderr[-3000:])
    finally:
        pilot.stop()
        provider.stop()
