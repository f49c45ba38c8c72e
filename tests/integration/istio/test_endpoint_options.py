"""Endpoint options istiod writes in every assignment (shapes from istioctl's config dump
in the Istio corpus): `health_check_config: {}` and `policy: {overprovisioning_factor:
140}`, Envoy's defaults, served as Envoy serves them; options sofamesh lacks are refused
by name (other overprovisioning factors and health check ports are implemented:
tests/integration/lb_priority)."""

from __future__ import annotations

import json
import subprocess
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import FIXTURES, free_port, sofamesh_command
from tests.integration.admin.helpers import request, start_envoy, start_sofamesh, stop
from tests.integration.istio.test_hcm_options import bootstrap
from tests.support.threaded_http import serve_http


def istio_assignment(upstream: int) -> dict:
    """The dumped assignment's shape (policy, health_check_config, health_status,
    weights) pointed at the test's upstream."""
    dump = json.loads((FIXTURES / "istio" / "source" / "proxyconfig_config_dump.json").read_text())
    eps = next(c for c in dump["configs"] if c["@type"].endswith("EndpointsConfigDump"))
    cla = json.loads(json.dumps(eps["static_endpoint_configs"][0]["endpoint_config"]))
    cla.pop("@type", None)
    cla["cluster_name"] = "c"
    lbe = cla["endpoints"][0]["lb_endpoints"][0]
    lbe["endpoint"]["address"] = {
        "socket_address": {"address": "127.0.0.1", "port_value": upstream}
    }
    cla["endpoints"][0]["lb_endpoints"] = [lbe]
    # the dump prints the locality's unset weight as 0, which Envoy's constraints refuse
    cla["endpoints"][0].pop("load_balancing_weight", None)
    return cla


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    with serve_http(_Ok) as port:
        yield port


def test_istio_assignment_served_as_envoy(tmp_path, upstream):
    cla = istio_assignment(upstream)
    assert cla["policy"] == {"overprovisioning_factor": 140}
    assert cla["endpoints"][0]["lb_endpoints"][0]["endpoint"]["health_check_config"] == {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port = free_port(), free_port()
        doc = bootstrap(admin, port, upstream)
        doc["static_resources"]["clusters"][0]["load_assignment"] = cla
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(doc))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            status, _, body = request(port, "GET", "/")
        finally:
            stop(proc)
        assert (status, body) == (200, "ok"), who


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (
            lambda cla: cla["endpoints"][0]["lb_endpoints"][0]["endpoint"][
                "health_check_config"
            ].update(hostname="checks.example"),
            (
                "endpoint.health_check_config.hostname: HealthCheckConfig.hostname is not "
                "implemented by sofamesh"
            ),
        ),
    ],
)
def test_options_that_change_something_are_refused(tmp_path, change, refused):
    cla = istio_assignment(1)
    change(cla)
    doc = bootstrap(free_port(), 0, 1)
    doc["static_resources"]["clusters"][0]["load_assignment"] = cla
    cfg = tmp_path / "v.json"
    cfg.write_text(json.dumps(doc))
    r = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert refused in r.stderr, r.stderr
