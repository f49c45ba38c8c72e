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


def _fs_rules(http: bool = True) -> dict:
    """istiod's shape of a `source.principals` rule: the caller's identity as the filter
    state io.istio.peer_principal (a header rule too for HTTP)."""
    peer = "io.istio.peer_principal"
    rules: dict = {
        "action": "ALLOW",
        "policies": {
            "ns[default]-policy[a]-rule[0]": {
                "permissions": [{"any": True}],
                "principals": [
                    {"filter_state": {"key": peer, "string_match": {"exact": SPIFFE_A}}}
                ],
            },
        },
    }
    if http:
        rules["policies"]["ns[default]-policy[shown]-rule[0]"] = {
            "permissions": [{"header": {"name": "x-show", "present_match": True}}],
            "principals": [
                {"filter_state": {"key": peer, "string_match": {"prefix": "spiffe://"}}}
            ],
        }
    return rules


def _peer_principal(istio: bool) -> dict:
    """What sets io.istio.peer_principal: Istio's own istio_authn filter (Istio's Envoy
    build; sofamesh implements it), or, in the upstream Envoy these tests run, Istio's newer
    shape: set_filter_state from the peer's URI SAN."""
    if istio:
        return {
            "name": "istio_authn",
            "typed_config": {
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/io.istio.network.authn.Config",
            },
        }
    return {
        "name": "envoy.filters.network.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3"
            ".Config",
            "on_new_connection": [
                {
                    "object_key": "io.istio.peer_principal",
                    "factory_key": "envoy.string",
                    "format_string": {
                        "text_format_source": {"inline_string": "%DOWNSTREAM_PEER_URI_SAN%"}
                    },
                }
            ],
        },
    }


def bootstrap(pki: dict, ports: dict[str, int], admin: int, echo: int, istio: bool = False) -> dict:
    ca_file = pki["dir"] / "ca.crt"
    fs_filters = _http("rbac_fs", "rbac fs ok")
    fs_filters[0]["typed_config"]["http_filters"].insert(
        0,
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {"@type": HTTP_RBAC, "rules": _fs_rules()},
        },
    )
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
                {
                    "name": "http_fs",
                    "stat_prefix": "http_fs",
                    "address": _addr(ports["http_fs"]),
                    "filter_chains": [
                        {
                            "transport_socket": _tls(pki["plainhost"], trusted=ca_file),
                            "filters": [_peer_principal(istio), *fs_filters],
                        }
                    ],
                },
                {
                    "name": "tcp_fs",
                    "stat_prefix": "tcp_fs",
                    "address": _addr(ports["tcp_fs"]),
                    "filter_chains": [
                        {
                            "transport_socket": _tls(pki["plainhost"], trusted=ca_file),
                            "filters": [
                                _peer_principal(istio),
                                {
                                    "name": "envoy.filters.network.rbac",
                                    "typed_config": {
                                        "@type": NET_RBAC,
                                        "stat_prefix": "tcp_fs_rbac",
                                        "rules": _fs_rules(http=False),
                                    },
                                },
                                *_tcp("tcp_fs_in"),
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
    shown = GET.replace(b"\r\n\r\n", b"\r\nx-show: 1\r\n\r\n")
    for proto, port, payload in (
        ("http filter_state", ports["http_fs"], GET),
        ("http filter_state, x-show", ports["http_fs"], shown),
        ("tcp filter_state", ports["tcp_fs"], b"hi"),
    ):
        for who in ("client_a", "client_b", None):
            ctx = c(pki, who) if who else c(pki)
            out[f"{proto}: {who or 'no certificate'}"] = _status(
                tls_exchange(port, ctx, None, payload)
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
    for kind in ("envoy", "sofamesh", "sofamesh istio_authn"):
        ports = {n: free_port() for n in ("http", "http_sni", "tcp", "http_fs", "tcp_fs")}
        admin = free_port()
        b = bootstrap(pki, ports, admin, echo, istio=kind.endswith("istio_authn"))
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


def test_peer_principal_filter_state_as_envoy(results):
    """The network set_filter_state formats on a new connection, before the TLS handshake:
    %DOWNSTREAM_PEER_URI_SAN% is absent there in Envoy 1.40, so no identity rule holds;
    sofamesh gives the same answers, HTTP and TCP."""
    env = {k: v for k, v in results["envoy"][0].items() if "filter_state" in k}
    assert set(env.values()) == {"403 Forbidden", "rejected"}, env
    got = results["sofamesh"][0]
    diffs = {k: (env[k], got.get(k)) for k in env if env[k] != got.get(k)}
    assert not diffs, diffs


def test_istio_authn_peer_principal(results):
    """Istio's istio_authn sets io.istio.peer_principal once the handshake is done: istiod's
    filter_state principals then name callers by their SPIFFE identity, as the
    `authenticated` principal does in Envoy (the first listeners' answers)."""
    got = {k: v for k, v in results["sofamesh istio_authn"][0].items() if "filter_state" in k}
    env = results["envoy"][0]
    assert got == {
        "http filter_state: client_a": env["http: identity a"],
        "http filter_state: client_b": env["http: identity b"],
        "http filter_state: no certificate": env["http: no certificate"],
        "http filter_state, x-show: client_a": "200 OK",
        "http filter_state, x-show: client_b": "200 OK",
        "http filter_state, x-show: no certificate": "403 Forbidden",
        "tcp filter_state: client_a": env["tcp: identity a"],
        "tcp filter_state: client_b": env["tcp: identity b"],
        "tcp filter_state: no certificate": env["tcp: no certificate"],
    }


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
