"""`VirtualHost.include_request_attempt_count` / `include_attempt_count_in_response`
(istiod sets the first on every virtual host), as Envoy 1.40 acts on them: each upstream
try carries `x-envoy-attempt-count: N` (1, then 2 on the first retry, ...), and the
downstream response the number of tries it took."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest

from tests.conftest import free_port
from tests.integration.admin.helpers import start_envoy, start_sofamesh, stop
from tests.integration.istio.test_hcm_options import bootstrap
from tests.support.threaded_http import serve_http


class _Flaky(BaseHTTPRequestHandler):
    """/fail/N/key: 503 for the first N requests with this key, then 200. Every request's
    x-envoy-attempt-count is recorded under its key."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[dict[str, list]] = {}
    lock = threading.Lock()

    def do_GET(self):
        _, _, n, key = self.path.split("/", 3)
        with self.lock:
            tries = self.seen.setdefault(key, [])
            tries.append(self.headers.get("x-envoy-attempt-count"))
            k = len(tries)
        status = 503 if k <= int(n) else 200
        body = json.dumps({"try": k}).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky():
    with serve_http(_Flaky) as port:
        yield port


RETRY = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.01s"}}


def _config(admin: int, port: int, upstream: int, dead: int) -> dict:
    doc = bootstrap(admin, port, upstream)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    rc = hcm["typed_config"]["route_config"]
    retry_route = {"match": {"prefix": "/fail/"}, "route": {"cluster": "c", "retry_policy": RETRY}}
    dead_route = {
        "match": {"prefix": "/dead"},
        "route": {"cluster": "dead", "retry_policy": {**RETRY, "retry_on": "connect-failure"}},
    }
    rc["virtual_hosts"] = [
        # both options (the response too)
        {
            "name": "both",
            "domains": ["both"],
            "include_request_attempt_count": True,
            "include_attempt_count_in_response": True,
            "routes": [retry_route, dead_route],
        },
        # istiod's shape: the upstream is told, the response is not
        {
            "name": "istio",
            "domains": ["istio"],
            "include_request_attempt_count": True,
            "routes": [retry_route],
        },
        # neither: a client's own x-envoy-attempt-count goes through untouched
        {"name": "off", "domains": ["*"], "routes": [retry_route]},
    ]
    dead_addr = {"socket_address": {"address": "127.0.0.1", "port_value": dead}}
    doc["static_resources"]["clusters"].append(
        {
            "name": "dead",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "dead",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": dead_addr}}]}],
            },
        }
    )
    return doc


def _get(port: int, host: str, path: str, extra: dict | None = None) -> tuple[int, str | None]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"host": host, **(extra or {})})
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("x-envoy-attempt-count")
    finally:
        conn.close()


CASES = (
    ("both", "/fail/0/{who}-b0", None),  # first try answers
    ("both", "/fail/1/{who}-b1", None),
    ("both", "/fail/2/{who}-b2", None),  # the third try answers
    ("both", "/fail/5/{who}-b5", None),  # retries exhausted: the last 503 with its count
    ("istio", "/fail/2/{who}-i2", None),
    ("istio", "/fail/0/{who}-i0", {"x-envoy-attempt-count": "7"}),  # the client's replaced
    ("off", "/fail/1/{who}-o1", None),
    ("off", "/fail/0/{who}-o0", {"x-envoy-attempt-count": "7"}),
    ("both", "/dead", None),  # no upstream at all: the local 503 after three tries
)


def test_attempt_count_as_envoy(tmp_path, flaky):
    got = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port, dead = free_port(), free_port(), free_port()
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(_config(admin, port, flaky, dead)))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            answers = [_get(port, host, path.format(who=who), extra) for host, path, extra in CASES]
        finally:
            stop(proc)
        upstream = [_Flaky.seen.get(path.format(who=who).rsplit("/", 1)[1]) for _, path, _ in CASES]
        got[who] = list(zip(answers, upstream, strict=True))
    assert got["sofamesh"] == got["envoy"]
    envoy = dict(
        zip(
            (p.split("/")[3] if p.startswith("/fail") else p for _, p, _ in CASES),
            got["envoy"],
            strict=True,
        )
    )
    # what Envoy does, spelled out (so a change on either side shows here too)
    assert envoy["{who}-b2"] == ((200, "3"), ["1", "2", "3"])
    assert envoy["{who}-b5"] == ((503, "3"), ["1", "2", "3"])
    assert envoy["{who}-i2"] == ((200, None), ["1", "2", "3"])
    assert envoy["{who}-i0"] == ((200, None), ["1"])
    assert envoy["{who}-o0"] == ((200, None), ["7"])
