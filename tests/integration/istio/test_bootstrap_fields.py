"""Bootstrap fields Istio's pilot-agent always writes, each as Envoy 1.40 acts on it:
`application_log_config` (the log line format), `deferred_stat_options` (a cluster's
traffic stats appear at first use), `cluster_manager` (the outlier event log is created;
deferred cluster creation changes nothing visible), `bootstrap_extensions` (the internal
listener extension, accepted; any other, refused by name)."""

from __future__ import annotations

import json
import re
import subprocess
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import FIXTURES, envoy_binary, free_port, sofamesh_command
from tests.integration.admin.helpers import get, request, start_envoy, start_sofamesh, stop
from tests.support.threaded_http import serve_http

ISTIO = json.loads((FIXTURES / "istio" / "bootstrap_default.json").read_text())
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)


def bootstrap(admin: int, port: int, upstream: int, **extra) -> dict:
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": "in",
            "route_config": {
                "name": "r",
                "virtual_hosts": [
                    {
                        "name": "v",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "used"}}],
                    }
                ],
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

    def cluster(name: str) -> dict:
        addr = {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}
        return {
            "name": name,
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}],
            },
        }

    return {
        "node": {"id": "sidecar~127.0.0.1~a.default~default.svc.cluster.local", "cluster": "a"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [hcm]}],
                }
            ],
            "clusters": [cluster("used"), cluster("idle")],
        },
        **extra,
    }


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


def _cluster_stats(text: str, cluster: str) -> set[str]:
    return {
        line.split(":", 1)[0][len(f"cluster.{cluster}.") :]
        for line in text.splitlines()
        if line.startswith(f"cluster.{cluster}.")
    }


def test_deferred_stats_and_istio_cluster_manager_as_envoy(tmp_path, upstream):
    """Istio's deferred_stat_options and cluster_manager: before traffic neither shows a
    cluster's traffic stats; after a request the used cluster's appear in both, the idle
    one's stay hidden; the outlier event log file is created."""
    seen = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port = free_port(), free_port()
        log_path = tmp_path / f"{who}-outlier.log"
        cm = json.loads(json.dumps(ISTIO["cluster_manager"]))
        cm["outlier_detection"]["event_log_path"] = str(log_path)
        doc = bootstrap(
            admin,
            port,
            upstream,
            deferred_stat_options=ISTIO["deferred_stat_options"],
            cluster_manager=cm,
        )
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(doc))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            before = get(admin, "/stats")[1]
            assert request(port, "GET", "/")[0] == 200
            after = get(admin, "/stats")[1]
        finally:
            stop(proc)
        assert log_path.exists(), who
        seen[who] = (before, after)
    for who, (before, after) in seen.items():
        assert "upstream_rq_total" not in _cluster_stats(before, "used"), who
        assert "upstream_rq_total" in _cluster_stats(after, "used"), who
        assert "upstream_cx_total" not in _cluster_stats(after, "idle"), who
        assert "upstream_rq_total" not in _cluster_stats(after, "idle"), who
    # what sofamesh shows of the idle cluster, Envoy shows too
    assert _cluster_stats(seen["sofamesh"][1], "idle") <= _cluster_stats(seen["envoy"][1], "idle")


def _log_lines(proc_args, cfg) -> str:
    r = subprocess.run(  # noqa: PLW1510 - the output is what is tested
        [*proc_args, "--mode", "validate", "-c", str(cfg), "-l", "info"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stderr + r.stdout


def test_application_log_config_formats_log_lines_as_envoy(tmp_path):
    doc = bootstrap(
        free_port(),
        0,
        1,
        application_log_config=ISTIO["application_log_config"],
        layered_runtime=ISTIO["layered_runtime"],  # sofamesh warns that it acts on none
    )
    cfg = tmp_path / "log.json"
    cfg.write_text(json.dumps(doc))
    # Istio's text_format: %Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t
    line = re.compile(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\t(info|warning)\tenvoy \S+ \S+:\d+\t.*\tthread=\d+$",
        re.MULTILINE,
    )
    for cmd in ([envoy_binary()], [*sofamesh_command(), "proxy"]):
        out = _log_lines(cmd, cfg)
        assert line.search(out), (cmd, out[-2000:])
    both = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg), "--log-format", "%v"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 1
    assert (
        "Only one of ApplicationLogConfig.log_format or CLI option --log-format can be specified"
        in both.stderr
    )


def _validate(tmp_path, doc) -> subprocess.CompletedProcess:
    cfg = tmp_path / "v.json"
    cfg.write_text(json.dumps(doc))
    return subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bootstrap_extensions_internal_listener_only(tmp_path):
    doc = bootstrap(free_port(), 0, 1, bootstrap_extensions=ISTIO["bootstrap_extensions"])
    r = _validate(tmp_path, doc)
    assert r.returncode == 0, r.stderr
    doc["bootstrap_extensions"].append(
        {
            "name": "envoy.bootstrap.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                "singleton": True,
            },
        }
    )
    r = _validate(tmp_path, doc)
    assert r.returncode == 1
    assert "bootstrap_extensions: Bootstrap.bootstrap_extensions" in r.stderr
    assert "only envoy.bootstrap.internal_listener" in r.stderr


def test_cluster_manager_fields_sofamesh_lacks_are_refused(tmp_path):
    """Every ClusterManager field is implemented now (upstream_bind_config:
    tests/integration/proxy/test_upstream_bind.py); what the bind does not do is refused
    with the bootstrap's path."""
    bind = {
        "source_address": {"address": "127.0.0.6", "port_value": 0},
        "socket_options": [{"level": 1, "name": 2, "int_value": 1}],
    }
    doc = bootstrap(free_port(), 0, 1, cluster_manager={"upstream_bind_config": bind})
    r = _validate(tmp_path, doc)
    assert r.returncode == 1
    assert (
        "cluster_manager.upstream_bind_config.socket_options: BindConfig.socket_options is "
        "not implemented by sofamesh" in r.stderr
    ), r.stderr


def test_overload_manager_as_istio_writes_it(tmp_path, upstream):
    """Istio's global connection limit (2147483647, past any open-file limit): accepted,
    traffic flows, the monitor's stats read as Envoy's; a reachable limit validates (it is
    enforced: tests/integration/differential/test_global_connection_limit.py)."""
    lines = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port = free_port(), free_port()
        doc = bootstrap(admin, port, upstream, overload_manager=ISTIO["overload_manager"])
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(doc))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            assert request(port, "GET", "/")[0] == 200
            text = get(admin, "/stats?filter=^overload\\.envoy\\.resource_monitors")[1]
        finally:
            stop(proc)
        lines[who] = set(text.splitlines())
    assert lines["sofamesh"] == lines["envoy"]
    assert (
        "overload.envoy.resource_monitors.global_downstream_max_connections.pressure: 0"
        in lines["sofamesh"]
    )
    doc = bootstrap(free_port(), 0, 1, overload_manager=ISTIO["overload_manager"])
    mon = doc["overload_manager"]["resource_monitors"][0]["typed_config"]
    mon["max_active_downstream_connections"] = 100
    r = _validate(tmp_path, doc)
    assert r.returncode == 0, r.stderr
