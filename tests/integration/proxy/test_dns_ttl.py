"""STRICT_DNS clusters with their own resolver (`typed_dns_resolver_config`, Envoy's c-ares
resolver pointed at a test DNS server) and `respect_dns_ttl` (what Istio writes on its DNS
clusters), Envoy 1.40 and `sofamesh proxy` on one bootstrap:

- with respect_dns_ttl, the cluster asks again when the record's TTL (1 s) runs out, not at
  its dns_refresh_rate (60 s): a changed record moves traffic within seconds;
- without it, the same resolver is asked once, at start, in the same time;
- a name the server does not know leaves the cluster empty (503), with update_success, as
  Envoy counts an empty answer.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.dns_server import DnsServer
from tests.support.envoy import ProxyProcess, admin_get

CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _upstream(ip: str, port: int, name: str) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer((ip, port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _cluster(name: str, host: str, port: int, dns_port: int, respect: bool) -> dict:
    return {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "dns_refresh_rate": "60s",
        "respect_dns_ttl": respect,
        "typed_dns_resolver_config": {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {
                "@type": CARES,
                "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": dns_port}}],
                "dns_resolver_options": {"no_default_search_domain": True},
            },
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def _bootstrap(listen: int, admin: int, up: int, dns_port: int, tag: str) -> dict:
    routes = [
        {"match": {"prefix": f"/{c}"}, "route": {"cluster": c}} for c in ("ttl", "rate", "nx")
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM,
                                        "stat_prefix": "in",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {"name": "v", "domains": ["*"], "routes": routes}
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": ROUTER},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _cluster("ttl", f"ttl.{tag}.test", up, dns_port, True),
                _cluster("rate", f"rate.{tag}.test", up, dns_port, False),
                _cluster("nx", f"nx.{tag}.test", up, dns_port, True),
            ],
        },
    }


def _get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _counters(admin: int, names: tuple[str, ...]) -> dict[str, int]:
    _, text = admin_get(admin, "/stats")
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k in names:
            out[k] = int(v)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    up_port = free_port()
    a = _upstream("127.0.0.1", up_port, "a")
    b = _upstream("127.0.0.2", up_port, "b")
    out = {}
    try:
        for kind in ("envoy", "sofamesh"):
            tag = f"{kind}{int(time.time() * 1000) % 100000}"
            dns = DnsServer(
                {f"ttl.{tag}.test": ("127.0.0.1", 1), f"rate.{tag}.test": ("127.0.0.1", 1)}
            ).start()
            listen, admin = free_port(), free_port()
            boot = _bootstrap(listen, admin, up_port, dns.port, tag)
            wd = tmp_path_factory.mktemp(kind)
            proc = (
                ProxyProcess.envoy(envoy_binary(), boot, wd)
                if kind == "envoy"
                else ProxyProcess.sofamesh(sofamesh_command(), boot, wd)
            )
            try:
                with proc:
                    first = (_get(listen, "/ttl"), _get(listen, "/rate"), _get(listen, "/nx")[0])
                    dns.set(f"ttl.{tag}.test", "127.0.0.2", 1)
                    dns.set(f"rate.{tag}.test", "127.0.0.2", 1)
                    t0 = time.monotonic()
                    moved = None
                    while time.monotonic() - t0 < 8:
                        if _get(listen, "/ttl")[1] == b"b":
                            moved = time.monotonic() - t0
                            break
                        time.sleep(0.1)
                    time.sleep(3)
                    out[kind] = {
                        "first": first,
                        "moved_s": moved,
                        "rate_after": _get(listen, "/rate"),
                        "ttl_queries": dns.count(f"ttl.{tag}.test"),
                        "rate_queries": dns.count(f"rate.{tag}.test"),
                        "nx_queries": dns.count(f"nx.{tag}.test"),
                        "stats": _counters(
                            admin,
                            (
                                "cluster.nx.update_success",
                                "cluster.nx.update_failure",
                                "cluster.rate.update_failure",
                            ),
                        ),
                    }
            finally:
                dns.stop()
    finally:
        for s in (a, b):
            s.shutdown()
            s.server_close()
    return out


@pytest.mark.parametrize("kind", ["envoy", "sofamesh"])
def test_respect_dns_ttl_moves_traffic(results, kind):
    r = results[kind]
    assert r["first"] == ((200, b"a"), (200, b"a"), 503), r
    assert r["moved_s"] is not None and r["moved_s"] < 4, r
    # without respect_dns_ttl: asked once in these seconds (60 s refresh), still on a
    assert r["rate_queries"] == 1, r
    assert r["rate_after"] == (200, b"a"), r
    # the 1 s TTL: asked again about every second
    assert r["ttl_queries"] >= 4, r


def test_dns_clusters_as_envoy(results):
    e, s = results["envoy"], results["sofamesh"]
    assert e["first"] == s["first"]
    assert e["rate_after"] == s["rate_after"]
    assert e["rate_queries"] == s["rate_queries"]
    names = set(e["stats"]) | set(s["stats"])
    assert {k: e["stats"].get(k, 0) for k in names} == {k: s["stats"].get(k, 0) for k in names}
    assert s["stats"]["cluster.nx.update_success"] >= 1, s  # an empty answer is a success
    assert abs(e["ttl_queries"] - s["ttl_queries"]) <= 3, (e, s)
