"""`RetryPolicy.retry_host_predicate: envoy.retry_host_predicates.previous_hosts` with
`host_selection_retry_max_attempts` (istiod sets both, 5, on every retried route), as Envoy
1.40 acts on them: a retry's host is chosen again while it is one already tried, so the
tries of a request reach different endpoints. Three endpoints that always answer 503, a
RANDOM cluster, two retries: with the predicate every request's three tries reach three
different endpoints through both proxies; without it, the same endpoint often answers twice.
Other predicates are refused by name."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port, sofamesh_command
from tests.integration.admin.helpers import start_envoy, start_sofamesh, stop
from tests.integration.istio.test_attempt_count import _get
from tests.integration.istio.test_hcm_options import bootstrap

REQUESTS = 20


def _server(index: int, seen: dict, lock: threading.Lock) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            with lock:
                seen.setdefault(self.path, []).append(index)
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def three():
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()
    servers = [_server(i, seen, lock) for i in range(3)]
    try:
        yield [s.server_address[1] for s in servers], seen
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


RETRY = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.005s"}}
PREVIOUS_HOSTS = {
    "name": "envoy.retry_host_predicates.previous_hosts",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3"
        ".PreviousHostsPredicate"
    },
}


def _config(admin: int, port: int, ports: list[int], predicates: list | None = None) -> dict:
    doc = bootstrap(admin, port, ports[0])
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vh = hcm["typed_config"]["route_config"]["virtual_hosts"][0]
    with_pred = {
        **RETRY,
        "retry_host_predicate": predicates or [PREVIOUS_HOSTS],
        "host_selection_retry_max_attempts": "50",
    }
    vh["routes"] = [
        {"match": {"prefix": "/pred/"}, "route": {"cluster": "c", "retry_policy": with_pred}},
        {"match": {"prefix": "/plain/"}, "route": {"cluster": "c", "retry_policy": RETRY}},
    ]
    cluster = doc["static_resources"]["clusters"][0]
    cluster["lb_policy"] = "RANDOM"
    cluster["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {
                    "endpoint": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}
                    }
                }
                for p in ports
            ]
        }
    ]
    return doc


def test_previous_hosts_as_envoy(tmp_path, three):
    ports, seen = three
    result = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port = free_port(), free_port()
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(_config(admin, port, ports)))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            answers = [
                _get(port, "a", f"/{kind}/{who}-{i}")[0]
                for kind in ("pred", "plain")
                for i in range(REQUESTS)
            ]
        finally:
            stop(proc)
        assert answers == [503] * (2 * REQUESTS), who
        pred = [seen[f"/pred/{who}-{i}"] for i in range(REQUESTS)]
        plain = [seen[f"/plain/{who}-{i}"] for i in range(REQUESTS)]
        assert all(len(t) == 3 for t in pred + plain), (who, pred, plain)
        result[who] = (
            sum(len(set(t)) == 3 for t in pred),  # requests whose tries all differ
            sum(len(set(t)) < 3 for t in plain),  # requests where an endpoint answered twice
        )
    # P(a repeat with the predicate) ~ (2/3)^51 a request; P(no repeat without it) = 2/9
    assert result["envoy"][0] == REQUESTS and result["envoy"][1] > 0, result
    assert result["sofamesh"][0] == REQUESTS and result["sofamesh"][1] > 0, result


def test_other_host_predicates_are_refused(tmp_path):
    canary = {
        "name": "envoy.retry_host_predicates.omit_canary_hosts",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3"
            ".OmitCanaryHostsPredicate"
        },
    }
    cfg = tmp_path / "v.json"
    cfg.write_text(json.dumps(_config(free_port(), 0, [1, 2, 3], [PREVIOUS_HOSTS, canary])))
    r = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert (
        "retry_policy.retry_host_predicate[1].typed_config: extension type.googleapis.com/"
        "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate is not "
        "implemented by sofamesh" in r.stderr
    ), r.stderr
    assert "retry_host_predicate[0]" not in r.stderr, r.stderr
