"""End to end: a Dubbo provider registered in real ZooKeeper becomes a cluster that real
Envoy 1.40, on ADS from `sofamesh pilot --config`, shows in /clusters and proxies a TCP
connection to.

The provider listens on the IPv6 loopback [::1] and registers `dubbo://[::1]:<port>/...`:
the pilot gives Dubbo services a tcp_proxy listener on the service's own port, which Envoy
binds on 127.0.0.1, so provider and listener share the port number on different loopback
addresses (as a sidecar's outbound listener and a remote provider would on two hosts).
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
from urllib.parse import parse_qs, quote_plus, unquote_plus, urlsplit

import pytest
from kazoo.client import KazooClient

from tests.conftest import envoy_binary, free_port
from tests.integration.pilot.conftest import PilotProcess, ads_bootstrap
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.wait import wait_until

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(90)]

IFACE = "org.apache.dubbo.demo.GreetingService"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(b"provider:" + data)


class _V6Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True


def free_port_both() -> int:
    """A port free on 127.0.0.1 (for Envoy's listener) and on [::1] (for the provider)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on both loopbacks")


def through_envoy(port: int, payload: bytes) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out
    except OSError:
        return None


def test_dubbo_provider_in_zookeeper_reached_through_envoy(zookeeper, tmp_path):
    port = free_port_both()
    echo = _V6Server(("::1", port), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()

    provider = KazooClient(hosts=zookeeper.hosts, timeout=2.0)
    provider.start(timeout=10)
    root = "/e2e/dubbo"
    url = (
        f"dubbo://[::1]:{port}/{IFACE}?anyhost=false&application=greeting-provider"
        f"&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&interface={IFACE}"
        f"&methods=greet&pid=1&release=2.7.23&side=provider&timestamp=1700000000000"
        f"&version=1.0.0"
    )
    provider.ensure_path(f"{root}/{IFACE}/providers")
    provider.create(f"{root}/{IFACE}/providers/{quote_plus(url, safe='*')}", b"", ephemeral=True)

    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(
        json.dumps({"registries": [{"type": "zookeeper", "hosts": zookeeper.hosts, "root": root}]})
    )
    pilot = PilotProcess(tmp_path / "pilot", extra=["--config", str(cfg)])
    admin = free_port()
    envoy = ProxyProcess.envoy(
        envoy_binary(), ads_bootstrap(pilot.xds_port, admin, False), tmp_path / "envoy"
    )
    cluster = f"outbound|{port}||{IFACE}"
    try:
        pilot.start()
        envoy.start()

        def endpoint_line() -> str | None:
            _, text = admin_get(admin, "/clusters")
            for line in text.splitlines():
                if line.startswith(f"{cluster}::[::1]:{port}::health_flags::"):
                    return line
            return None

        line = wait_until(endpoint_line, 15, f"{cluster} endpoint in Envoy /clusters")
        assert line.endswith("::healthy"), line
        _, text = admin_get(admin, "/clusters")
        assert f"{cluster}::[::1]:{port}::weight::100" in text  # Dubbo's default weight

        reply = wait_until(
            lambda: through_envoy(port, b"hello dubbo"),
            10,
            "a TCP connection through Envoy's listener",
        )
        assert reply == b"provider:hello dubbo"
        _, stats = admin_get(admin, "/stats")
        key = f"cluster.{cluster}.upstream_cx_total: "
        [cx] = [int(ln[len(key) :]) for ln in stats.splitlines() if ln.startswith(key)]
        assert cx >= 1

        # the provider dies (its ZooKeeper session ends): Envoy loses the endpoint
        provider.stop()
        provider.close()
        wait_until(lambda: endpoint_line() is None, 10, "endpoint removal")
    finally:
        envoy.stop()
        pilot.stop()
        echo.shutdown()
        echo.server_close()
        with contextlib.suppress(Exception):  # already closed in the test body
            provider.stop()
            provider.close()


def test_pilot_exports_mesh_dubbo_services_to_zookeeper(zookeeper, tmp_path):
    """Registry sync through the pilot: a Dubbo service registered with the pilot's REST API
    appears in ZooKeeper where a Dubbo consumer looks, and goes when it is deregistered."""
    root = "/sync/dubbo"
    iface = "com.example.mesh.InventoryService"
    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(
        json.dumps(
            {
                "registries": [
                    {"type": "zookeeper", "hosts": zookeeper.hosts, "root": root, "export": True}
                ]
            }
        )
    )
    pilot = PilotProcess(tmp_path / "pilot", extra=["--config", str(cfg)])
    consumer = KazooClient(hosts=zookeeper.hosts, timeout=2.0)
    consumer.start(timeout=10)

    def providers() -> list[str]:
        path = f"{root}/{iface}/providers"
        return (
            [unquote_plus(c) for c in consumer.get_children(path)] if consumer.exists(path) else []
        )

    try:
        pilot.start()
        pilot.register(
            iface,
            "inv-1",
            address="127.0.0.1",
            port=20880,
            protocol="dubbo",
            labels={"version": "3.1.0", "methods": "reserve,release"},
            ttl_seconds=60,
        )
        pilot.register(
            "web", "web-1", address="127.0.0.1", port=8080, protocol="http", ttl_seconds=60
        )
        [url] = wait_until(providers, 10, "the exported provider node")
        parts = urlsplit(url)
        params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert (parts.scheme, parts.hostname, parts.port) == ("dubbo", "127.0.0.1", 20880)
        assert params["interface"] == iface and params["side"] == "provider"
        assert params["version"] == "3.1.0" and params["methods"] == "reserve,release"
        assert not consumer.exists(f"{root}/web")  # HTTP services are not Dubbo providers
        # the pilot serves one cluster for it, from the REST registration only
        cds = pilot.config("cds")
        assert [n for n in cds if iface in n] == [f"outbound|20880||{iface}"]

        pilot.deregister(iface, "inv-1")
        wait_until(lambda: providers() == [], 10, "the exported node's removal")
    finally:
        pilot.stop()
        consumer.stop()
        consumer.close()
