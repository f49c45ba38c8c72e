"""Istio's `stats_config` (the pilot-agent's tag extraction regexes, inclusion list and
histogram buckets, from its rendered bootstrap) and `Cluster.alt_stat_name`: sofamesh's
/stats/prometheus shows the names and labels Envoy 1.40 shows for the same bootstrap and
the same traffic, and /stats leaves out what the inclusion list leaves out."""

from __future__ import annotations

import json
import re
import time
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import FIXTURES, free_port
from tests.integration.admin.helpers import (
    get,
    request,
    start_envoy,
    start_sofamesh,
    stop_with_workers,
)
from tests.support.threaded_http import serve_http

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
OUTBOUND = "outbound|80||echo.default.svc.cluster.local"


def istio_stats_config() -> dict:
    sc = json.loads((FIXTURES / "istio" / "bootstrap_stats_inclusion.json").read_text())
    sc = sc["stats_config"]
    # Istio's bucket settings match `envoy`/`istio` prefixes, which no Envoy stat name has;
    # one more (as a ProxyConfig annotation writes them) that does match
    sc["histogram_bucket_settings"].append(
        {"match": {"prefix": "cluster.outbound"}, "buckets": [1, 5, 10, 25, 50, 100, 1000]}
    )
    return sc


def bootstrap(admin: int, port: int, upstream: int) -> dict:
    def cluster(name: str) -> dict:
        addr = {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}
        return {
            "name": name,
            "alt_stat_name": name + ";",  # as istiod and the pilot-agent write it
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}],
            },
        }

    routes = [
        {"match": {"prefix": "/x"}, "route": {"cluster": "xds-grpc"}},
        {"match": {"prefix": "/"}, "route": {"cluster": OUTBOUND}},
    ]
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": "inbound_0.0.0.0_8080",
            "route_config": {
                "name": "r",
                "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}],
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
    return {
        "node": {"id": "sidecar~127.0.0.1~a.default~default.svc.cluster.local", "cluster": "a"},
        "stats_config": istio_stats_config(),
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "0.0.0.0_8080",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [hcm]}],
                }
            ],
            "clusters": [cluster("xds-grpc"), cluster(OUTBOUND)],
        },
    }


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status = 404 if self.path.startswith("/x") else 200
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    with serve_http(_Upstream) as port:
        yield port


def _prom(text: str, port: int) -> dict[str, str]:
    """{metric{labels}: value} with the listener's port made neutral."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        out[key.replace(f"_{port}", "_PORT")] = value
    return out


def _run(start, tmp_path, who, upstream, workers=1):
    admin, port = free_port(), free_port()
    cfg = tmp_path / f"{who}.json"
    cfg.write_text(json.dumps(bootstrap(admin, port, upstream)))
    if who == "sofamesh":
        proc = start(cfg, admin, "--concurrency", str(workers))
    else:
        proc = start(cfg, admin)
    try:
        for path in ("/", "/", "/x"):
            request(port, "GET", path)
        if who == "envoy":
            time.sleep(5.5)  # Envoy merges histograms at each stats flush (5 s)
        prom = _prom(get(admin, "/stats/prometheus")[1], port)
        text = get(admin, "/stats")[1]
    finally:
        stop_with_workers(proc)
    return prom, text


# sofamesh makes a cluster's upstream_rq_<class> counters at start, Envoy at first use:
# zero-valued ones may show in sofamesh only.
_EAGER = re.compile(
    r'^envoy_cluster_upstream_rq\{cluster_name="[^"]+",response_code_class="\dxx"\}$'
)
# timing, and the admin's own requests (polled /ready answers 503 while workers start)
_TIMING = re.compile(
    r"_(sum|bucket)\{|uptime|memory|server_version|days_until|destroy|envoy_http_admin_"
)


# sofamesh with workers shows per-worker listener stats and worker deaths Envoy (one
# worker) does not have
_WORKERS = re.compile(r"^envoy_listener_worker_1_|^envoy_server_worker_deaths")


@pytest.mark.parametrize("workers", [1, 2])
def test_istio_stats_config_as_envoy_shows_it(tmp_path, upstream, workers):
    envoy, envoy_text = _run(start_envoy, tmp_path, "envoy", upstream)
    sofa, sofa_text = _run(start_sofamesh, tmp_path, "sofamesh", upstream, workers)
    only_sofa = {
        k
        for k in set(sofa) - set(envoy)
        if not (_EAGER.match(k) and sofa[k] == "0") and not _WORKERS.match(k)
    }
    assert only_sofa == set()
    for key in (
        # Istio's cluster_name regex cuts "<alt_stat_name>" ending in ';'
        f'envoy_cluster_upstream_rq{{cluster_name="{OUTBOUND}",response_code_class="2xx"}}',
        f'envoy_cluster_upstream_cx_total{{cluster_name="{OUTBOUND}"}}',
        f'envoy_cluster_upstream_cx_tx_bytes_total{{cluster_name="{OUTBOUND}"}}',
        'envoy_cluster_upstream_rq{cluster_name="xds-grpc",response_code="404"}',
        'envoy_cluster_upstream_rq{cluster_name="xds-grpc",response_code_class="4xx"}',
        'envoy_listener_downstream_cx_total{listener_address="127.0.0.1_PORT"}',
        'envoy_http_inbound_0_0_0_0_8080_downstream_rq{response_code_class="2xx"}',
        "envoy_server_live{}",
    ):
        assert key in sofa, key
        # with two workers the three requests may open one upstream connection each
        if workers == 1 or "_cx_" not in key:
            assert sofa[key] == envoy[key], key
    # the bucket bounds histogram_bucket_settings give, and Envoy's default ones elsewhere
    bucket = re.compile(r'le="([^"]+)"')
    for name in (
        f'envoy_cluster_upstream_rq_time_bucket{{cluster_name="{OUTBOUND}"',
        'envoy_cluster_upstream_rq_time_bucket{cluster_name="xds-grpc"',
    ):
        les = sorted(bucket.search(k).group(1) for k in sofa if k.startswith(name))
        assert les == sorted(bucket.search(k).group(1) for k in envoy if k.startswith(name))
        assert les
    assert 'le="0.5"' not in "".join(k for k in sofa if OUTBOUND in k and "_bucket" in k)
    for key, value in envoy.items():  # counters that count requests agree
        if workers > 1 and ("worker" in key or "concurrency" in key):
            continue  # the number of workers itself
        if key in sofa and not _TIMING.search(key) and "cx_" not in key:
            assert sofa[key] == value, key
    # the inclusion list: stats outside it are absent from both
    for absent in ("http.inbound_0.0.0.0_8080.downstream_rq_total", "vhost.", "cluster.xds-grpc."):
        assert (absent in sofa_text) == (absent in envoy_text), absent
    assert "cluster.xds-grpc;.upstream_rq_total" in sofa_text
    assert f"cluster.{OUTBOUND}.upstream_rq_total" not in sofa_text
