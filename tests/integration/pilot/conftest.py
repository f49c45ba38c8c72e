"""Pilot integration fixtures: a real `sofamesh pilot` process, Envoy ADS bootstraps, REST helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import sofamesh_command
from tests.support.servers import free_ports

NODE_ID = "sidecar~127.0.0.1~pod.ns~ns.svc.cluster.local"


def http(method: str, url: str, body=None, timeout: float = 5.0) -> tuple[int, dict | str]:
    """A tiny blocking HTTP client: (status, parsed JSON or text)."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw.decode(errors="replace")


class PilotProcess:
    """`sofamesh pilot` on free loopback ports, its log in the test's tmp dir."""

    def __init__(
        self,
        workdir: Path,
        store: str | None = None,
        extra: list[str] | None = None,
        data_dir: Path | None = None,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.xds_port, self.api_port, self.outbound_port = free_ports(3)
        self.data_dir = data_dir or self.workdir / "pilot-data"
        self.store = store
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"pilot-{self.api_port}.log"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def argv(self) -> list[str]:
        argv = [
            *sofamesh_command(),
            "pilot",
            "--xds-address",
            f"127.0.0.1:{self.xds_port}",
            "--api-address",
            f"127.0.0.1:{self.api_port}",
            "--outbound-port",
            str(self.outbound_port),
            "--listener-address",
            "127.0.0.1",
            "--data-dir",
            str(self.data_dir),
            *self.extra,
        ]
        if self.store:
            argv += ["--store", self.store]
        return argv

    def start(self, timeout: float = 20.0) -> PilotProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed after Popen
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pilot exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if http("GET", self.api + "/healthz", timeout=0.5)[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pilot not ready after {timeout}s:\n{self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None

    def register(self, service: str, iid: str, **body) -> dict:
        status, out = http("PUT", f"{self.api}/v1/services/{service}/instances/{iid}", body)
        assert status in (200, 201), (status, out)
        return out

    def config(self, kind: str) -> dict:
        """Names -> versions the pilot serves now for `kind` (cds, eds, lds, rds)."""
        status, out = http("GET", f"{self.api}/debug/config?type={kind}")
        assert status == 200, out
        return out[kind]["resources"]

    def wait_config(self, kind: str, pred, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            cfg = self.config(kind)
            if pred(cfg):
                return cfg
            if time.monotonic() > deadline:
                raise AssertionError(f"pilot {kind} config never matched: {cfg}")
            time.sleep(0.05)

    def deregister(self, service: str, iid: str) -> None:
        status, out = http("DELETE", f"{self.api}/v1/services/{service}/instances/{iid}")
        assert status == 204, (status, out)


def ads_bootstrap(
    xds_port: int, admin: int, delta: bool, node_id: str = NODE_ID, xds_host: str = "127.0.0.1"
) -> dict:
    """An Istio-style Envoy bootstrap: everything but the xDS cluster comes over ADS."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {
            "id": node_id,
            "cluster": "test.ns",
            "metadata": {"NAMESPACE": "ns", "CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": "1.24.0"},
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


# The sidecars the pilot's end-to-end tests run: real Envoy 1.40 and the sofamesh proxy,
# both started as users start them, from the same ADS bootstrap.
SIDECARS = ("envoy", "sofamesh")


def ads_sidecar(kind: str, xds_port: int, admin: int, delta: bool, workdir: Path):
    """A ProxyProcess (not started) of `kind` fed by the pilot at `xds_port`."""
    from tests.conftest import envoy_binary
    from tests.support.envoy import ProxyProcess

    bootstrap = ads_bootstrap(xds_port, admin, delta)
    if kind == "envoy":
        return ProxyProcess.envoy(envoy_binary(), bootstrap, workdir)
    return ProxyProcess.sofamesh(sofamesh_command(), bootstrap, workdir)


@pytest.fixture
def pilot(tmp_path):
    p = PilotProcess(tmp_path)
    try:
        yield p.start()
    finally:
        p.stop()
