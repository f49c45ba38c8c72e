"""RBAC naming callers by identity: Principal `authenticated` (the verified client
certificate's URI SAN, as Istio's `source.principals`) and Permission
`requested_server_name` (the TLS SNI), in the HTTP and the network RBAC filter, one
bootstrap through Envoy 1.40 and sofamesh: the same clients get the same answers and the
rbac counters agree."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.tls.test_tls_downstream import (
    GET,
    INSPECTOR,
    SPIFFE_A,
    _addr,
    _client_ctx,
    _Echo,
    _http,
    _Server,
    _tcp,
    _tls,
    make_pki,
    tls_exchange,
)
from tests.support.envoy import ProxyProcess, admin_get

HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


def _rules() -> dict:
    return {
        "action": "ALLOW",
        "policies": {
            "caller-a": {
                "permissions": [{"any": True}],
                "principals": [{"authenticated": {"principal_name": {"exact": SPIFFE_A}}}],
            },
            "any-cert-for-open-name": {
                "permissions": [{"requested_server_name": {"exact": "open.example.com"}}],
                "principals": [{"authenticated": {}}],
            },
        },
    }


def bootstrap(pki: dict, ports: dict[str, int], admin: int, echo: int) -> dict:
    ca_file = pki["dir"] / "ca.crt"
    http_filters = _http("rbac_http", "rbac ok")
    hcm = http_filters[0]["typed_config"]
    hcm["http_filters"].insert(
        0,
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {"@type": HTTP_RBAC, "rules": _rules()},
        },
    )
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "http",
                    "stat_prefix": "http",
                    "address": _addr(ports["http"]),
                    "filter_chains": [
                        {
                            # a client certificate is asked for, not required: RBAC decides
                            "transport_socket": _tls(pki["plainhost"], trusted=ca_file),
                            "filters": http_filters,
                        }
                    ],
                },
                {
                    # with tls_inspector: the SNI is the requested server name RBAC sees
                    "name": "http_sni",
                    "stat_prefix": "http_sni",
                    "address": _addr(ports["http_sni"]),
                    "listener_filters": [INSPECTOR],
                    "filter_chains": [
                        {
                            "transport_socket": _tls(pki["plainhost"], trusted=ca_file),
                            "filters": http_filters,
                        }
                    ],
                },
                {
                    "name": "tcp",
                    "stat_prefix": "tcp",
                    "address": _addr(ports["tcp"]),
                    "filter_chains": [
                        {
                            "transport_socket": _tls(pki["plainhost"], trusted=ca_file),
                            "filters": [
                                {
                                    "name": "envoy.filters.network.rbac",
                                    "typed_config": {
                                        "@type": NET_RBAC,
                                        "stat_prefix": "tcp_rbac",
                                        "rules": _rules(),
                                    },
                                },
                                *_tcp("tcp_in"),
                            ],
                        }
                    ],
                },
            ],
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(echo)}}]}],
                    },
                }
            ],
        },
    }


def _status(reply: str) -> str:
    if reply == "rejected":
        return reply
    for code in ("200 OK", "403 Forbidden"):
        if code in reply:
            return code
    return "echo" if "echo:" in reply else reply


def run_cases(pki: dict, ports: dict[str, int]) -> dict[str, str]:
    c = _client_ctx
    out = {}
    for proto, port, payload in (
        ("http", ports["http"], GET),
        ("http+tls_inspector", ports["http_sni"], GET),
        ("tcp", ports["tcp"], b"hi"),
    ):
        out[f"{proto}: identity a"] = _status(tls_exchange(port, c(pki, "client_a"), None, payload))
        out[f"{proto}: identity b"] = _status(tls_exchange(port, c(pki, "client_b"), None, payload))
        out[f"{proto}: no certificate"] = _status(tls_exchange(port, c(pki), None, payload))
        out[f"{proto}: identity b, open SNI"] = _status(
            tls_exchange(port, c(pki, "client_b"), "open.example.com", payload)
        )
        out[f"{proto}: no certificate, open SNI"] = _status(
            tls_exchange(port, c(pki), "open.example.com", payload)
        )
    return out


def rbac_stats(admin: int) -> dict[str, int]:
    status, text = admin_get(admin, "/stats")
    assert status == 200
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if ".rbac." in name and value.strip().isdigit():
            out[name] = int(value)
    return out


@pytest.fixture(scope="module")
def echo():
    srv = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def results(pki, echo, tmp_path_factory):
    out = {}
    for kind in ("envoy", "sofamesh"):
        ports = {n: free_port() for n in ("http", "http_sni", "tcp")}
        admin = free_port()
        b = bootstrap(pki, ports, admin, echo)
        wd = Path(tmp_path_factory.mktemp(kind))
        proc = (
            ProxyProcess.envoy(envoy_binary(), b, wd)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), b, wd)
        )
        with proc:
            cases = run_cases(pki, ports)
            time.sleep(0.3)
            out[kind] = (cases, rbac_stats(admin))
    return out


def test_rbac_by_identity_as_envoy(results):
    env, sofa = results["envoy"][0], results["sofamesh"][0]
    assert env["http: identity a"] == "200 OK", env
    assert env["http: identity b"] == "403 Forbidden", env
    assert env["http: identity b, open SNI"] == "403 Forbidden", env  # no tls_inspector
    assert env["tcp: identity a"] == "echo", env
    assert env["http+tls_inspector: identity b, open SNI"] == "200 OK", env
    diffs = {k: (env[k], sofa.get(k)) for k in env if env[k] != sofa.get(k)}
    assert not diffs, diffs


def test_rbac_counters_as_envoy(results):
    env, sofa = results["envoy"][1], results["sofamesh"][1]
    assert env, env
    diffs = {
        k: (env.get(k), sofa.get(k)) for k in set(env) | set(sofa) if env.get(k) != sofa.get(k)
    }
    assert not diffs, diffs


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))
