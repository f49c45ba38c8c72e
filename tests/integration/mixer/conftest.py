"""`sofamesh mixer` as a user starts it, and bootstrap pieces pointing a proxy at it."""

from __future__ import annotations

import http.client
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import sofamesh_command

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
H2_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class MixerProcess:
    """`sofamesh mixer` on 127.0.0.1 port 0 (it prints the ports it bound)."""

    def __init__(self, workdir: Path, policy: str = "", extra: list[str] | None = None):
        self.workdir = workdir
        self.policy_path = workdir / "mixer.yaml"
        self.policy_path.write_text(policy)
        self.log_path = workdir / "mixer.log"
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.grpc_port = self.http_port = 0

    def start(self, grpc_port: int = 0, http_port: int = 0) -> MixerProcess:
        argv = [
            *sofamesh_command(),
            "mixer",
            "--grpc-address",
            f"127.0.0.1:{grpc_port}",
            "--http-address",
            f"127.0.0.1:{http_port}",
            "--config",
            str(self.policy_path),
            "--log-level",
            "warning",
            *self.extra,
        ]
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.match(r"sofamesh mixer: grpc \S+:(\d+) http \S+:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"mixer did not start: {line!r} {self.log_path.read_text()}")
        self.grpc_port, self.http_port = int(m.group(1)), int(m.group(2))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


@pytest.fixture
def mixer_factory(tmp_path: Path):
    started: list[MixerProcess] = []

    def make(policy: str = "", grpc_port: int = 0, **kw) -> MixerProcess:
        m = MixerProcess(tmp_path, policy, **kw).start(grpc_port=grpc_port)
        started.append(m)
        return m

    yield make
    for m in started:
        m.stop()


def mixer_cluster(port: int) -> dict:
    """The `mixer` cluster: gRPC needs HTTP/2 to the upstream."""
    return {
        "name": "mixer",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": H2_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "mixer",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def app_cluster(port: int) -> dict:
    return {
        "name": "app",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "app",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def http_bootstrap(
    *,
    node: str,
    admin: int,
    listen: int,
    app: int,
    mixer: int | None,
    http_filters: list[dict] = (),  # type: ignore[assignment]
    access_log: list[dict] = (),  # type: ignore[assignment]
    rate_limits: list[dict] = (),  # type: ignore[assignment]
) -> dict:
    route: dict = {"cluster": "app"}
    if rate_limits:
        route["rate_limits"] = list(rate_limits)
    hcm: dict = {
        "@type": HCM,
        "stat_prefix": "ingress",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
                }
            ],
        },
        "http_filters": [
            *http_filters,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    if access_log:
        hcm["access_log"] = list(access_log)
    clusters = [app_cluster(app)]
    if mixer is not None:
        clusters.append(mixer_cluster(mixer))
    return {
        "node": {"id": node, "cluster": node},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "http",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def get_status(port: int, path: str = "/", headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def wait_metric(mixer: MixerProcess, name: str, want: float, timeout: float = 10.0, **labels):
    deadline = time.monotonic() + timeout
    got = mixer.metric(name, **labels)
    while got < want and time.monotonic() < deadline:
        time.sleep(0.1)
        got = mixer.metric(name, **labels)
    return got
